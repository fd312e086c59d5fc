"""Scoring for `python -m superres evaluate`: every method on every image of the test sets, each output scored
against its HR (superres.metrics, HaarPSI from piq), then averaged per (set, scale, method, strength).
The only part of the evaluation that imports torch."""
from __future__ import annotations

import os
import time
from collections import defaultdict

import numpy as np

from .benchmark import build_methods, image_names, load_enhancer, load_pair, log_progress
from .evaluation_output import SAMPLE_SCALE
from .results import DIGITS, MEDIAN_SCORES, PERCEPTUAL, SCORES


def to_tensor(rgb: np.ndarray):
    import torch
    return torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)[None].div_(255)


def score(out: np.ndarray, hr, scale: int) -> dict:
    """All scores of one output against its HR (an array or a tensor from `to_tensor`), both cropped to
    the same size; `scale` pixels are shaved on each side."""
    import piq
    from .metrics import high_freq_ratio, lattice, psnr_y, rgb_to_y, spectral_distance, ssim_y
    y = hr if not isinstance(hr, np.ndarray) else to_tensor(hr)
    h, w = min(out.shape[0], y.shape[2]), min(out.shape[1], y.shape[3])
    x, y = to_tensor(out[:h, :w]), y[..., :h, :w]
    b = int(scale)
    xs, ys = x[..., b:h - b, b:w - b], y[..., b:h - b, b:w - b]
    ly, lt = (rgb_to_y(t)[0, 0].numpy() for t in (xs, ys))
    return {"psnr_y": float(psnr_y(x, y, b)), "ssim_y": float(ssim_y(x, y, b)),
            PERCEPTUAL: float(piq.haarpsi(xs, ys, data_range=1.0)), "hf_ratio": float(high_freq_ratio(xs, ys)),
            "lattice": lattice(ly, lt), "spectral": spectral_distance(ly, lt, scale)}


_WORKER: dict = {}


def _init_worker(method_names, strengths, data_root, model_dir, threads) -> None:
    """Build the methods once per process; `threads` > 0 pins torch, OpenCV and ONNX Runtime to that many."""
    if threads > 0:
        import torch
        torch.set_num_threads(threads)
        try:
            import cv2
            cv2.setNumThreads(threads)
        except ImportError:
            pass
    enhancer = load_enhancer(model_dir, threads=max(threads, 0)) if "ours" in method_names else None
    _WORKER.update(methods=build_methods(method_names, strengths, data_root, enhancer), data_root=data_root)


def _evaluate_image(job) -> tuple[list[dict], dict, dict]:
    """Every method on one image, then its scores: (rows, CPU seconds by method, outputs kept for samples)."""
    set_name, scale, path, keep = job
    lr, hr = load_pair(_WORKER["data_root"], set_name, scale, path)
    hr_t = to_tensor(hr)
    rows, cpu, kept = [], defaultdict(float), {}
    for m in _WORKER["methods"]:
        t = time.thread_time()
        out = m(lr, scale)
        t2 = time.thread_time()
        row = {"set": set_name, "scale": scale, "method": m.name, "strength": m.strength, "image": path.stem,
               **score(out, hr_t, scale)}
        cpu[m.label] += t2 - t
        cpu["scoring"] += time.thread_time() - t2
        rows.append(row)
        if keep:
            kept[m.label] = out
    if keep:
        kept.update(input=lr, target=hr)
    return rows, dict(cpu), kept


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def evaluate_quality(data_root, tasks, method_names, strengths, model_dir=None, limit=None, samples=(),
                     jobs=None, log=None):
    """Run every method on every image of every (set, scale) task and score it.

    jobs > 1: that many worker processes with one thread each (torch, OpenCV and ONNX Runtime), which
    keeps every core busy without thread hand-offs (and degrades gracefully on a shared machine);
    jobs == 1: in this process, with the libraries' own threading. The CPU seconds logged per method
    are per-thread times, so they do not depend on what else runs on the machine.

    Returns (quality rows, per-image rows, {image name: {label or input/target: array}} for the samples)."""
    log = log or log_progress
    jobs = default_jobs() if jobs is None else max(1, int(jobs))
    work = []
    for set_name, scale in tasks:
        for path in image_names(data_root, set_name, scale, limit):
            keep = set_name == "portraits512" and scale == SAMPLE_SCALE and path.stem in (samples or ())
            work.append((set_name, scale, path, keep))
    remaining = defaultdict(int)
    for set_name, scale, _, _ in work:
        remaining[(set_name, scale)] += 1
    per_image, cpu, kept = [], defaultdict(float), {}
    t0 = time.perf_counter()
    init = (method_names, strengths, str(data_root), str(model_dir) if model_dir else None)

    def consume(results):
        for (set_name, scale, path, _), (rows, c, k) in zip(work, results):
            per_image.extend(rows)
            for key, v in c.items():
                cpu[key] += v
            if k:
                kept[path.stem] = k
            remaining[(set_name, scale)] -= 1
            if remaining[(set_name, scale)] == 0:
                log(f"  {set_name} x{scale} done at {time.perf_counter() - t0:.0f} s")

    if len(work) < 8 * jobs:        # too little to be worth starting workers (each imports torch, ~2-4 s)
        jobs = 1
    if jobs == 1:
        import torch
        threads = torch.get_num_threads()
        try:
            _init_worker(*init, 0)
            consume(map(_evaluate_image, work))
        finally:
            torch.set_num_threads(threads)
            _WORKER.clear()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(*init, 1)) as pool:
            consume(pool.map(_evaluate_image, work))
    total = sum(cpu.values())
    log(f"  quality: {len(work)} images in {time.perf_counter() - t0:.0f} s with {jobs} process(es); CPU s: "
        + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()) + f"; total {total:.0f} "
        f"(~{total / max(1, min(jobs, os.cpu_count() or 1)):.0f} s on {min(jobs, os.cpu_count() or 1)} idle cores)")
    return aggregate(per_image), per_image, kept


def aggregate(per_image: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for r in per_image:
        groups[(r["set"], r["scale"], r["method"], r["strength"])].append(r)
    rows = []
    for (set_name, scale, method, strength), rs in groups.items():
        row = {"set": set_name, "scale": scale, "method": method, "strength": strength, "n_images": len(rs)}
        for k in SCORES:
            average = np.median if k in MEDIAN_SCORES else np.mean
            row[k] = round(float(average([r[k] for r in rs])), DIGITS[k])
        rows.append(row)
    return rows

