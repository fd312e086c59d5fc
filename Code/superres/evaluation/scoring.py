"""Scoring for `python -m superres evaluate`: every method on every image of the test sets, each output scored
against its HR (superres.training.metrics, HaarPSI from piq; on the face sets also the identity distance of
superres.evaluation.identity, the face found on the HR and its box reused on every output), then averaged per
(set, scale, method, strength). The only part of the evaluation that imports torch."""
from __future__ import annotations

import os
import time
from collections import defaultdict

import numpy as np

from superres.evaluation.benchmark import build_methods, image_names, load_enhancer, load_pair, log_progress
from superres.evaluation.evaluation_output import SAMPLE_SCALE, SAMPLE_SETS
from superres.evaluation.results import DIGITS, FACE_SETS, IDENTITY, MEDIAN_SCORES, PERCEPTUAL, REAL_SETS, SCORES


def to_tensor(rgb: np.ndarray):
    import torch
    return torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)[None].div_(255)


def score(out: np.ndarray, hr, scale: int) -> dict:
    """All scores of one output against its HR (an array or a tensor from `to_tensor`), both cropped to
    the same size; `scale` pixels are shaved on each side."""
    import piq

    from superres.training.metrics import high_freq_ratio, lattice, psnr_y, rgb_to_y, spectral_distance, ssim_y
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


def _init_worker(method_names, strengths, data_root, model_dir, realesrgan_gpu, threads) -> None:
    """Build the methods once per process; `threads` > 0 pins torch, OpenCV and ONNX Runtime to that many
    (ncnn, Real-ESRGAN's runtime, keeps its own OpenMP threads)."""
    if threads > 0:
        import torch
        torch.set_num_threads(threads)
        try:
            import cv2
            cv2.setNumThreads(threads)
        except ImportError:
            pass
    enhancer = load_enhancer(model_dir, threads=max(threads, 0)) if "ours" in method_names else None
    _WORKER.update(methods=build_methods(method_names, strengths, data_root, enhancer, realesrgan_gpu),
                   data_root=data_root)


def _evaluate_image(job) -> tuple[list[dict], dict, dict]:
    """Every method on one image, then its scores: (rows, CPU seconds by method, outputs kept for samples).
    Real-ESRGAN runs only where the job says so (its subset of the real-world sets)."""
    set_name, scale, path, keep, with_realesrgan = job
    lr, hr = load_pair(_WORKER["data_root"], set_name, scale, path)
    hr_t = to_tensor(hr)
    face, ids = None, None
    if set_name in FACE_SETS:
        from superres.evaluation.identity import shared
        ids = shared()
        face = ids.find(hr)
    rows, cpu, kept = [], defaultdict(float), {}
    for m in _WORKER["methods"]:
        if m.name == "realesrgan" and not with_realesrgan:
            continue
        clock = time.process_time if m.multithreaded else time.thread_time
        t = clock()
        out = m(lr, scale)
        cpu[m.label] += clock() - t
        t2 = time.thread_time()
        row = {"set": set_name, "scale": scale, "method": m.name, "strength": m.strength, "image": path.stem,
               **score(out, hr_t, scale),
               IDENTITY: None if face is None else ids.distance(out[:hr.shape[0], :hr.shape[1]], face)}
        cpu["scoring"] += time.thread_time() - t2
        rows.append(row)
        if keep:
            kept[m.label] = out
    if keep:
        kept.update(input=lr, target=hr)
        if face is not None:
            kept["face"] = {"box": face.box, "points": ids.points(hr, face.box)}
    return rows, dict(cpu), kept


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def realesrgan_subset(names: list[str], limit: int | None, samples=()) -> list[str]:
    """The images Real-ESRGAN runs on: all of them with no limit; else the sample faces (for the close-ups)
    and images spread evenly over the rest of the sorted set, `limit` in all, in the set's order."""
    if not limit or limit >= len(names):
        return list(names)
    chosen = [n for n in names if n in samples][:limit]
    rest = [n for n in names if n not in chosen]
    k = limit - len(chosen)
    chosen += [rest[i * len(rest) // k] for i in range(k)]
    return [n for n in names if n in chosen]


def evaluate_quality(data_root, tasks, method_names, strengths, model_dir=None, limit=None, samples=(),
                     jobs=None, log=None, realesrgan_limit=None, realesrgan_gpu=-1):
    """Run every method on every image of every (set, scale) task and score it.

    jobs > 1: that many worker processes with one thread each (torch, OpenCV and ONNX Runtime), which
    keeps every core busy without thread hand-offs (and degrades gracefully on a shared machine);
    jobs == 1: in this process, with the libraries' own threading. The CPU seconds logged per method
    are per-thread times, so they do not depend on what else runs on the machine.

    Real-ESRGAN (if asked for) runs on the real-world sets only, on `realesrgan_subset` of each.

    Returns (quality rows, per-image rows, {set: {image name: {label or input/target/face: array}}} for the samples,
    {"realesrgan_images": {"<set> x<scale>": [images it ran on]}, "cpu_seconds": {label or "scoring": seconds}})."""
    log = log or log_progress
    jobs = default_jobs() if jobs is None else max(1, int(jobs))
    work, subsets = [], {}
    for set_name, scale in tasks:
        paths = image_names(data_root, set_name, scale, limit)
        runs_gan = "realesrgan" in method_names and set_name in REAL_SETS
        if runs_gan:
            subsets[f"{set_name} x{scale}"] = realesrgan_subset([p.stem for p in paths], realesrgan_limit, samples)
        for path in paths:
            keep = set_name in SAMPLE_SETS and scale == SAMPLE_SCALE and path.stem in (samples or ())
            work.append((set_name, scale, path, keep, runs_gan and path.stem in subsets[f"{set_name} x{scale}"]))
    remaining = defaultdict(int)
    for set_name, scale, *_ in work:
        remaining[(set_name, scale)] += 1
    per_image, cpu, kept = [], defaultdict(float), defaultdict(dict)
    t0 = time.perf_counter()
    init = (method_names, strengths, str(data_root), str(model_dir) if model_dir else None, int(realesrgan_gpu))

    def consume(results):
        for (set_name, scale, path, *_), (rows, c, k) in zip(work, results, strict=True):
            per_image.extend(rows)
            for key, v in c.items():
                cpu[key] += v
            if k:
                kept[set_name][path.stem] = k
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
    return aggregate(per_image), per_image, dict(kept), {"realesrgan_images": subsets, "cpu_seconds": dict(cpu)}


def _identity(rs: list[dict]) -> dict:
    found = [r[IDENTITY] for r in rs if r.get(IDENTITY) is not None]
    return {IDENTITY: round(float(np.mean(found)), DIGITS[IDENTITY]) if found else None,
            "identity_faces": len(found), "identity_missed": len(rs) - len(found)}


def aggregate(per_image: list[dict]) -> list[dict]:
    """Per (set, scale, method, strength): the mean of each score (the median of lattice and spectral), the
    identity over the images with a face; a method run on a subset also gets bicubic's scores on that subset."""
    groups = defaultdict(list)
    for r in per_image:
        groups[(r["set"], r["scale"], r["method"], r["strength"])].append(r)
    rows = []
    for (set_name, scale, method, strength), rs in groups.items():
        row = {"set": set_name, "scale": scale, "method": method, "strength": strength, "n_images": len(rs)}
        for k in SCORES:
            average = np.median if k in MEDIAN_SCORES else np.mean
            row[k] = round(float(average([r[k] for r in rs])), DIGITS[k])
        if set_name in FACE_SETS:
            row.update(_identity(rs))
        else:
            row.update({IDENTITY: None, "identity_faces": None, "identity_missed": None})
        bic = groups.get((set_name, scale, "bicubic", None), [])
        if method != "bicubic" and 0 < len(rs) < len(bic):
            names = {r["image"] for r in rs}
            same = [b for b in bic if b["image"] in names]
            row["bicubic_same_images"] = {"psnr_y": round(float(np.mean([b["psnr_y"] for b in same])),
                                                          DIGITS["psnr_y"]),
                                          IDENTITY: _identity(same)[IDENTITY] if set_name in FACE_SETS else None}
        rows.append(row)
    return rows

