"""python -m superres evaluate: score our models beside bicubic, Lanczos and OpenCV's FSRCNN, ESPCN and
LapSRN on the same inputs in one run, and time them. A benchmark that prints and writes results, not a test.

    python -m superres evaluate                      # everything (see below for the time)
    python -m superres evaluate --limit 2 --no-speed # a quick look
    python -m superres evaluate --model-dir runs/default/export --sets Set5 --scales 4

Writes into --out (default Code/results/):
    evaluation.json               the numbers (schema below), for the README and the write-up
    evaluation.md                 the same as Markdown tables, with the targets checked
    evaluation_per_image.csv      one row per image and method (for error bars and paired tests)
    samples/*.png, samples/README.md   crops: input / bicubic / LapSRN / ours s=0 / ours s=1 / target,
                                  from portraits/valid only (credited in samples/README.md)

Sets (under --data-root, by default ../shared/data next to the repository):
    portraits512         portraits/valid; HR = resized so the longer side is 512 (Lanczos, as training's
                         superres.data.load_photo does), cropped so the sides divide by 4; LR = PIL bicubic /scale
    portraits512_jpeg40  the same LR, saved as JPEG quality 40 (Pillow's default 4:2:0 chroma)
    Set5, Set14, BSD100  benchmarks/<set>/x<scale>/{HR,LR}: their own LR files (MATLAB imresize)
Scores, all from superres.metrics (the code that training reports with) except HaarPSI, on the output and
the HR cropped to the same size, with `scale` pixels shaved on each side (the published convention):
    psnr_y, ssim_y  on the Y channel of YCbCr (BT.601, as MATLAB's rgb2ycbcr)
    haarpsi         HaarPSI (Reisenhofer et al. 2018; piq, RGB, no learned weights): 0..1, higher is better
    hf_ratio        RMS of the Laplacian of Y, output over target: < 1 over-smoothed, > 1 invented texture
    lattice         the strongest grid peak (bins at multiples of 1/8 cycle/px) of the output's spectrum,
                    relative to the target's: 1 = none added; a PixelShuffle / strided grid drives it up
    spectral        mean |log10| ratio of output and target power in 24 radial bands above the LR Nyquist:
                    0 = the photo's own detail spectrum (both on Y, centred square crop, Hann window)
Means over the images of a set (medians for lattice and spectral). Speed: each method runs in its own child process (so peak memory is its
own): load, one warm-up, then the median of several runs of x4 on a 256x256 input (output 1024x1024).

JSON schema (format 1): {format, created, command, data_root, limit, machine{cpu, cores, threads, ...},
model_card{dir, name, created, untrained, default_strength, sha256{file: hex}} | null,
quality[{set, scale, method, strength|null, n_images, psnr_y, ssim_y, haarpsi, hf_ratio, lattice, spectral}],
speed[{method, strength|null, options, input, output, scale, runs, seconds_per_image, min_seconds,
megapixels_per_s, load_seconds, peak_rss_mb}], targets[{id, description, measured, required, passed|null}]}.

Time: the quality part is ~580 CPU-seconds (358 images x 8 methods: LapSRN ~36 %, ours at 3 strengths ~35 %,
scoring ~26 %), run by --jobs single-threaded worker processes, so ~5 min on 2 idle cores; the timing part adds
~1 min. `--scales 4` halves the portrait work; `--limit N` and `--sets` make quick runs.

This module imports torch only for scoring, so the speed children carry no torch in their memory.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

REPO = Path(__file__).resolve().parents[2]
FORMAT = 1

PORTRAIT_SIDE = 512
JPEG_QUALITY = 40
PORTRAIT_SETS = {"portraits512": None, "portraits512_jpeg40": JPEG_QUALITY}
BENCHMARK_SETS = ("Set5", "Set14", "BSD100")
SETS = (*PORTRAIT_SETS, *BENCHMARK_SETS)
SCALES = (4, 2)

METHODS = ("bicubic", "lanczos", "fsrcnn", "espcn", "lapsrn", "ours")
PEERS = {"fsrcnn": "FSRCNN", "espcn": "ESPCN", "lapsrn": "LapSRN"}   # method -> file prefix in peers/opencv
DISPLAY = {"bicubic": "Bicubic", "lanczos": "Lanczos", "fsrcnn": "FSRCNN", "espcn": "ESPCN",
           "lapsrn": "LapSRN", "ours": "Ours"}
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
PERCEPTUAL = "haarpsi"
PERCEPTUAL_TITLE = "HaarPSI"
SCORES = ("psnr_y", "ssim_y", PERCEPTUAL, "hf_ratio", "lattice", "spectral")
MEDIAN_SCORES = ("lattice", "spectral")   # a few images with huge values would rule a mean: the median
DIGITS = {"psnr_y": 4, "ssim_y": 4, PERCEPTUAL: 4, "hf_ratio": 4, "lattice": 3, "spectral": 4}  # rounded at display

SPEED_INPUT = 256
SPEED_SCALE = 4
SAMPLE_IMAGES = ("frll_126_03", "frll_140_08", "interfaces_092")
SAMPLE_CROP = 224          # side of the crops in HR pixels, centred on the face
# Issue 9's close-ups: where a grid or a halo shows first. Centres in the 512-px target, picked by eye.
SAMPLE_DETAILS = {
    "frll_126_03": {"eye": (215, 228), "mouth": (250, 310), "hair edge": (300, 104)},
    "frll_140_08": {"eye": (220, 226), "mouth": (250, 302), "hair edge": (258, 118)},
    "interfaces_092": {"eye": (236, 206), "mouth": (191, 290), "hair edge": (206, 46)},
}
DETAIL_CROP, DETAIL_ZOOM = 96, 2   # HR pixels per close-up, shown enlarged (nearest) so a 4-px grid is visible
CREDITS = {  # file-name prefix -> credit line (../shared/data/README.md)
    "frll": "Face Research Lab London Set, DeBruine, L. & Jones, B. (2017), doi:10.6084/m9.figshare.5047666.v5, CC BY 4.0",
    "canada": "Young Adult White Faces with Manipulated Versions, DeBruine, L., figshare 4220517, CC BY 4.0",
    "composite": "Young adult composite faces, DeBruine, L. (2016), doi:10.6084/m9.figshare.4055130.v1, CC BY 4.0",
    "lisa": "webmorphR.stim example photos, CC0",
    "zoom": "webmorphR.stim example photos, CC0",
    "interfaces": '"inter-faces" avatar set (Pexels / Unsplash community photos), CC0',
}

# Targets of issue 3 (the JPEG one is checked at the model card's default strength).
BICUBIC_GAIN_CLEAN = 2.0
BICUBIC_GAIN_JPEG = 1.5
SET5_X4_PSNR = 30.72
SET14_X4_PSNR = 27.6
LATTICE_MAX = 4.0
SPECTRAL_MAX_S1 = 0.5
SPEED_MAX_SECONDS = 0.35
SPEED_MIN_VS_LAPSRN = 8.0


def _log(msg: str) -> None:
    print(msg, flush=True)


class EvaluationError(RuntimeError):
    """Something the user can fix (missing data or model folder); `str(e)` says what."""


# ---- locations -------------------------------------------------------------------------------------
def default_data_root() -> Path:
    """../shared/data next to the repository (or next to the working directory)."""
    for cand in (REPO.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return REPO.parent / "shared" / "data"


def default_out() -> Path:
    return REPO / "Code" / "results" if (REPO / "Code" / "superres").is_dir() else Path("results")


def check_data(root: Path, sets, scales, methods) -> None:
    root = Path(root)
    if not root.is_dir():
        raise EvaluationError(
            f"The data folder {root} does not exist. Point --data-root at the folder that holds "
            "portraits/, benchmarks/ and peers/ (by default ../shared/data next to the repository).")
    need = []
    if any(s in PORTRAIT_SETS for s in sets):
        need.append(root / "portraits" / "valid")
    need += [root / "benchmarks" / s for s in sets if s in BENCHMARK_SETS]
    need += [peer_file(root, m, s) for m in methods if m in PEERS for s in scales]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise EvaluationError(f"--data-root {root} lacks " + ", ".join(missing) +
                              " (expected portraits/valid, benchmarks/<set>/x<scale>/{HR,LR}, peers/opencv/*.pb).")


def peer_file(root: Path, method: str, scale: int) -> Path:
    return Path(root) / "peers" / "opencv" / f"{PEERS[method]}_x{scale}.pb"


# ---- data ------------------------------------------------------------------------------------------
@lru_cache(maxsize=128)
def portrait_hr(path: str, side: int = PORTRAIT_SIDE) -> Image.Image:
    """HR of a portrait: longer side resized to `side` (Lanczos, like training), cropped to multiples of 4."""
    with Image.open(path) as im:
        img = ImageOps.exif_transpose(im).convert("RGB")
    r = side / max(img.size)
    img = img.resize((max(4, round(img.width * r)), max(4, round(img.height * r))), Image.LANCZOS)
    return img.crop((0, 0, img.width - img.width % 4, img.height - img.height % 4))


def make_lr(hr: Image.Image, scale: int, jpeg_quality: int | None = None) -> Image.Image:
    lr = hr.resize((hr.width // scale, hr.height // scale), Image.BICUBIC)
    if jpeg_quality:
        buf = io.BytesIO()
        lr.save(buf, "JPEG", quality=jpeg_quality)
        buf.seek(0)
        lr = Image.open(buf).convert("RGB")
    return lr


def available_scales(root: Path, set_name: str) -> tuple[int, ...]:
    if set_name in PORTRAIT_SETS:
        return SCALES
    return tuple(s for s in SCALES if (Path(root) / "benchmarks" / set_name / f"x{s}" / "HR").is_dir())


def image_names(root: Path, set_name: str, scale: int, limit: int | None = None) -> list[Path]:
    if set_name in PORTRAIT_SETS:
        folder = Path(root) / "portraits" / "valid"
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    else:
        files = sorted((Path(root) / "benchmarks" / set_name / f"x{scale}" / "HR").glob("*.png"))
    return files[:limit] if limit else files


def load_pair(root: Path, set_name: str, scale: int, hr_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(LR, HR) as (H, W, 3) uint8 RGB arrays."""
    if set_name in PORTRAIT_SETS:
        hr = portrait_hr(str(hr_path))
        lr = make_lr(hr, scale, PORTRAIT_SETS[set_name])
    else:
        hr = Image.open(hr_path).convert("RGB")
        lr = Image.open(hr_path.parent.parent / "LR" / hr_path.name).convert("RGB")
    return np.asarray(lr), np.asarray(hr)


# ---- methods ---------------------------------------------------------------------------------------
class Method:
    """An upscaler: __call__((H, W, 3) uint8 RGB, scale) -> (scale*H, scale*W, 3) uint8 RGB."""
    name: str = ""
    strength: float | None = None
    options: dict = {}

    @property
    def label(self) -> str:
        return label(self.name, self.strength)


def label(method: str, strength: float | None) -> str:
    return DISPLAY.get(method, method) + ("" if strength is None else f" (s={strength:g})")


class PilResize(Method):
    def __init__(self, name: str):
        self.name = name
        self.resample = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}[name]

    def __call__(self, rgb, scale):
        h, w = rgb.shape[:2]
        return np.asarray(Image.fromarray(rgb).resize((w * scale, h * scale), self.resample))


class OpenCVPeer(Method):
    """FSRCNN / ESPCN / LapSRN through OpenCV's dnn_superres (they upscale Y; Cb and Cr go bicubic)."""

    def __init__(self, name: str, data_root: Path):
        self.name, self.data_root, self._sr = name, Path(data_root), {}

    def _model(self, scale):
        if scale not in self._sr:
            try:
                import cv2
            except ImportError as e:
                raise EvaluationError("The OpenCV peers need opencv-contrib-python-headless "
                                      "(pip install -e '.[eval]').") from e
            sr = cv2.dnn_superres.DnnSuperResImpl_create()
            sr.readModel(str(peer_file(self.data_root, self.name, scale)))
            sr.setModel(self.name, scale)
            self._sr[scale] = sr
        return self._sr[scale]

    def __call__(self, rgb, scale):
        out = self._model(scale).upsample(np.ascontiguousarray(rgb[..., ::-1]))
        return np.ascontiguousarray(out[..., ::-1])


class Ours(Method):
    """The shipped path: superres.inference.Enhancer.enhance (ONNX Runtime, tiling, strength blending)."""

    def __init__(self, enhancer, strength: float | None = None, tile: int | None = None):
        self.name, self.enhancer, self.tile = "ours", enhancer, tile
        self.strength = enhancer.default_strength if strength is None else float(strength)
        self.options = {"tile": "auto" if tile is None else tile}

    def __call__(self, rgb, scale):
        return np.asarray(self.enhancer.enhance(Image.fromarray(rgb), scale, self.strength, tile=self.tile))


def load_enhancer(model_dir, threads: int = 0):
    from .inference import Enhancer, ModelError
    try:
        return Enhancer(model_dir, threads=threads)
    except ModelError as e:
        raise EvaluationError(f"{e} (or leave `ours` out of --methods)") from e


def build_methods(names, strengths, data_root, enhancer=None) -> list[Method]:
    out = []
    for name in names:
        if name in ("bicubic", "lanczos"):
            out.append(PilResize(name))
        elif name in PEERS:
            out.append(OpenCVPeer(name, data_root))
        elif name == "ours":
            out += [Ours(enhancer, s) for s in strengths]
        else:
            raise EvaluationError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return out


# ---- scoring ---------------------------------------------------------------------------------------
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
    log = log or _log
    jobs = default_jobs() if jobs is None else max(1, int(jobs))
    work, task_of = [], []
    for set_name, scale in tasks:
        for path in image_names(data_root, set_name, scale, limit):
            keep = set_name == "portraits512" and scale == SPEED_SCALE and path.stem in (samples or ())
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


# ---- speed -----------------------------------------------------------------------------------------
def speed_input(data_root) -> Image.Image:
    """A real 256x256 face (first sample portrait at 256 px), or scikit-image's astronaut without data."""
    folder = Path(data_root) / "portraits" / "valid"
    names = [folder / f"{SAMPLE_IMAGES[0]}.jpg"] + (sorted(folder.glob("*.jpg")) if folder.is_dir() else [])
    for p in names:
        if p.is_file():
            return portrait_hr(str(p)).resize((SPEED_INPUT, SPEED_INPUT), Image.LANCZOS)
    from skimage import data
    return Image.fromarray(data.astronaut()).resize((SPEED_INPUT, SPEED_INPUT), Image.LANCZOS)


def _speed_specs(method_names, data_root, model_dir):
    """Every method at x4; ours (automatic tiles) and LapSRN at x2 as well."""
    specs = []
    for name in method_names:
        spec = {"method": name, "data_root": str(data_root), "strength": None, "options": {}, "scale": SPEED_SCALE}
        if name == "ours":
            specs.append({**spec, "model_dir": str(model_dir) if model_dir else None, "options": {"tile": "auto"}})
            specs.append({**spec, "model_dir": str(model_dir) if model_dir else None, "options": {"tile": 0}})
        else:
            specs.append(spec)
    specs += [{**s, "scale": 2} for s in specs if s["method"] in ("ours", "lapsrn") and s["options"].get("tile") != 0]
    return specs


def _child_env() -> dict:
    """The environment for the speed children: this copy of the package first on the path."""
    paths = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def measure_speed(method_names, data_root, model_dir, runs=5, budget_s=12.0, log=None) -> list[dict]:
    """Time each method in its own child process (`python -m superres.evaluate --speed-worker`)."""
    log = log or _log
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "input.png"
        speed_input(data_root).save(inp)
        for spec in _speed_specs(method_names, data_root, model_dir):
            spec.update(input=str(inp), runs=runs, budget_s=budget_s)
            proc = subprocess.run([sys.executable, "-m", "superres.evaluate", "--speed-worker"],
                                  input=json.dumps(spec), capture_output=True, text=True, timeout=900,
                                  env=_child_env())
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not lines:
                raise EvaluationError(f"timing {spec['method']} failed:\n{proc.stderr[-2000:]}")
            row = json.loads(lines[-1])
            rows.append(row)
            log(f"  {label(row['method'], row['strength'])} x{row['scale']} {row['options'] or ''}: "
                f"{row['seconds_per_image']:.3f} s/image, {row['megapixels_per_s']:.2f} MP/s, "
                f"peak {row['peak_rss_mb']:.0f} MB")
    return rows


def _speed_worker() -> None:
    """Child process: build one method, warm up, time it; print one JSON line."""
    spec = json.loads(sys.stdin.read())
    scale = int(spec["scale"])
    t0 = time.perf_counter()
    if spec["method"] == "ours":
        tile = spec["options"].get("tile")
        method = Ours(load_enhancer(spec.get("model_dir")), spec.get("strength"),
                      tile=None if tile == "auto" else int(tile))
    else:
        method = build_methods([spec["method"]], (), spec["data_root"])[0]
    rgb = np.asarray(Image.open(spec["input"]).convert("RGB"))
    method(rgb, scale)                                    # warm-up (and lazy loading)
    load_s = time.perf_counter() - t0
    times = []
    while len(times) < 3 or (len(times) < spec["runs"] and sum(times) < spec["budget_s"]):
        t = time.perf_counter()
        out = method(rgb, scale)
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    mp = out.shape[0] * out.shape[1] / 1e6
    print(json.dumps({
        "method": method.name, "strength": method.strength, "options": method.options,
        "input": f"{rgb.shape[1]}x{rgb.shape[0]}", "output": f"{out.shape[1]}x{out.shape[0]}", "scale": scale,
        "runs": len(times), "seconds_per_image": round(sec, 4), "min_seconds": round(min(times), 4),
        "megapixels_per_s": round(mp / sec, 3), "load_seconds": round(load_s - sec, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1)}))


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, where there is one: ru_maxrss survives exec on Linux,
    so in a child it would still hold the parent's peak at the fork."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)


# ---- targets ---------------------------------------------------------------------------------------
def find(rows, set_name, scale, method, strength=None):
    for r in rows:
        if (r["set"], r["scale"], r["method"]) == (set_name, scale, method) and (
                strength is None or (r["strength"] is not None and abs(r["strength"] - strength) < 1e-9)):
            return r
    return None


def check_targets(quality, speed, default_strength=0.5) -> list[dict]:
    def target(id_, desc, measured, required, passed):
        ok = None if measured is None or required is None else bool(passed)
        return {"id": id_, "description": desc, "measured": measured, "required": required, "passed": ok}

    def psnr(*key):
        r = find(quality, *key)
        return None if r is None else r["psnr_y"]

    out = []
    bic, s0 = psnr("portraits512", 4, "bicubic"), psnr("portraits512", 4, "ours", 0.0)
    req = None if bic is None else round(bic + BICUBIC_GAIN_CLEAN, 3)
    out.append(target("portraits_x4_s0", f"portraits512 x4, strength 0: PSNR(Y) >= bicubic + {BICUBIC_GAIN_CLEAN} dB",
                      s0, req, s0 is not None and req is not None and s0 >= req))
    bic_j, sd = psnr("portraits512_jpeg40", 4, "bicubic"), psnr("portraits512_jpeg40", 4, "ours", default_strength)
    req = None if bic_j is None else round(bic_j + BICUBIC_GAIN_JPEG, 3)
    out.append(target("jpeg40_x4_default",
                      f"portraits512_jpeg40 x4, default strength {default_strength:g}: PSNR(Y) >= bicubic + "
                      f"{BICUBIC_GAIN_JPEG} dB", sd, req, sd is not None and req is not None and sd >= req))
    s5 = psnr("Set5", 4, "ours", 0.0)
    out.append(target("set5_x4_s0", f"Set5 x4, strength 0: PSNR(Y) >= {SET5_X4_PSNR} dB", s5, SET5_X4_PSNR,
                      s5 is not None and s5 >= SET5_X4_PSNR))
    s14 = psnr("Set14", 4, "ours", 0.0)
    out.append(target("set14_x4_s0", f"Set14 x4, strength 0: PSNR(Y) >= {SET14_X4_PSNR} dB", s14, SET14_X4_PSNR,
                      s14 is not None and s14 >= SET14_X4_PSNR))
    r0, r1 = find(quality, "portraits512", 4, "ours", 0.0), find(quality, "portraits512", 4, "ours", 1.0)
    d0 = None if r0 is None else round(abs(r0["hf_ratio"] - 1), 4)
    d1 = None if r1 is None else round(abs(r1["hf_ratio"] - 1), 4)
    out.append(target("hf_s1_closer", "portraits512 x4: |HF ratio - 1| at strength 1 < at strength 0",
                      d1, d0, d0 is not None and d1 is not None and d1 < d0))
    p1 = None if r1 is None else r1["psnr_y"]
    out.append(target("psnr_s1_above_bicubic", "portraits512 x4, strength 1: PSNR(Y) > bicubic", p1, bic,
                      p1 is not None and bic is not None and p1 > bic))
    # a GAN that looks real (issue 9): no grid at any strength, the photo's own detail spectrum at strength 1
    ours4 = [r for r in quality if (r["set"], r["scale"], r["method"]) == ("portraits512", 4, "ours")
             and r.get("lattice") is not None]
    worst = max(ours4, key=lambda r: r["lattice"], default=None)
    out.append(target("lattice_all_strengths", f"portraits512 x4: lattice <= {LATTICE_MAX:g} at every strength"
                      + ("" if worst is None else f" (worst: s={worst['strength']:g})"),
                      None if worst is None else worst["lattice"], LATTICE_MAX,
                      worst is not None and worst["lattice"] <= LATTICE_MAX))
    sp1 = None if r1 is None else r1.get("spectral")
    out.append(target("spectral_s1", f"portraits512 x4, strength 1: spectral <= {SPECTRAL_MAX_S1:g}", sp1,
                      SPECTRAL_MAX_S1, sp1 is not None and sp1 <= SPECTRAL_MAX_S1))
    rb = find(quality, "portraits512", 4, "bicubic")
    h1, hb = (None if r is None else r.get(PERCEPTUAL) for r in (r1, rb))
    out.append(target("haarpsi_s1", f"portraits512 x4, strength 1: {PERCEPTUAL_TITLE} >= bicubic's", h1, hb,
                      h1 is not None and hb is not None and h1 >= hb))
    ours = next((r for r in speed if r["method"] == "ours" and r["options"].get("tile") == "auto"
                 and r.get("scale", 4) == 4), None)
    lap = next((r for r in speed if r["method"] == "lapsrn" and r.get("scale", 4) == 4), None)
    t = None if ours is None else ours["seconds_per_image"]
    out.append(target("speed_x4_256", f"x4 256->1024: <= {SPEED_MAX_SECONDS} s per image", t, SPEED_MAX_SECONDS,
                      t is not None and t <= SPEED_MAX_SECONDS))
    ratio = None if t is None or lap is None else round(lap["seconds_per_image"] / t, 2)
    out.append(target("speed_vs_lapsrn", f"x4 256->1024: >= {SPEED_MIN_VS_LAPSRN:g}x faster than LapSRN (same run)",
                      ratio, SPEED_MIN_VS_LAPSRN, ratio is not None and ratio >= SPEED_MIN_VS_LAPSRN))
    return out


# ---- samples ---------------------------------------------------------------------------------------
def credit(name: str) -> str:
    return CREDITS.get(name.split("_")[0], "see ../shared/data/README.md")


def label_font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:   # Pillow < 10.1
        return ImageFont.load_default()


def sample_grid(parts: dict[str, np.ndarray], scale: int = SPEED_SCALE, crop: int = SAMPLE_CROP) -> Image.Image:
    """One row of face crops: input (nearest), the methods present, target; labelled underneath."""
    hr = parts["target"]
    h, w = hr.shape[:2]
    c = min(crop, h, w) // scale * scale
    cx, cy = w // 2, int(h * 0.45)
    x0 = min(max(0, (cx - c // 2) // scale * scale), w - c)
    y0 = min(max(0, (cy - c // 2) // scale * scale), h - c)
    panels = [("Input (x4 LR)", np.asarray(Image.fromarray(
        parts["input"][y0 // scale:(y0 + c) // scale, x0 // scale:(x0 + c) // scale]).resize((c, c), Image.NEAREST)))]
    for key in (label("bicubic", None), label("lapsrn", None), label("ours", 0.0), label("ours", 1.0)):
        if key in parts:
            panels.append((key, parts[key][y0:y0 + c, x0:x0 + c]))
    panels.append(("Target", hr[y0:y0 + c, x0:x0 + c]))
    pad, text_h = 4, 22
    grid = Image.new("RGB", (len(panels) * (c + pad) - pad, c + text_h), "white")
    draw = ImageDraw.Draw(grid)
    font = label_font(15)
    for i, (name, arr) in enumerate(panels):
        grid.paste(Image.fromarray(np.ascontiguousarray(arr)), (i * (c + pad), 0))
        draw.text((i * (c + pad) + 4, c + 3), name, fill="black", font=font)
    return grid


def detail_grid(parts: dict[str, np.ndarray], centres: dict[str, tuple[int, int]]) -> Image.Image:
    """Close-ups (eye, mouth, hair edge: one row each) of bicubic, LapSRN, ours at strength 0 / 0.5 / 1 and the
    target, enlarged `DETAIL_ZOOM` times with nearest-neighbour so that a grid is seen, not smoothed away."""
    keys = [k for k in (label("bicubic", None), label("lapsrn", None), label("ours", 0.0), label("ours", 0.5),
                        label("ours", 1.0), "target") if k in parts]
    c, side, pad, text_h = DETAIL_CROP, DETAIL_CROP * DETAIL_ZOOM, 4, 20
    grid = Image.new("RGB", (len(keys) * (side + pad) - pad, len(centres) * (side + pad) + text_h), "white")
    draw = ImageDraw.Draw(grid)
    font = label_font(14)
    for j, key in enumerate(keys):
        draw.text((j * (side + pad) + 4, 2), "Target" if key == "target" else key, fill="black", font=font)
    for i, (region, (cx, cy)) in enumerate(centres.items()):
        h, w = parts["target"].shape[:2]
        x0, y0 = min(max(0, cx - c // 2), w - c), min(max(0, cy - c // 2), h - c)
        for j, key in enumerate(keys):
            crop = Image.fromarray(np.ascontiguousarray(parts[key][y0:y0 + c, x0:x0 + c]))
            grid.paste(crop.resize((side, side), Image.NEAREST), (j * (side + pad), text_h + i * (side + pad)))
        box = draw.textbbox((4, text_h + i * (side + pad) + 2), region, font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill="white")
        draw.text((4, text_h + i * (side + pad) + 2), region, fill="black", font=font)
    return grid


def write_samples(kept: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written, lines = [], []
    for name, parts in sorted(kept.items()):
        path = out_dir / f"{name}_x4.png"
        sample_grid(parts).save(path, optimize=True)
        written.append(path)
        lines.append(f"- `{path.name}`: portraits/valid/{name} — {credit(name)}")
        if name in SAMPLE_DETAILS:
            path = out_dir / f"{name}_x4_details.png"
            detail_grid(parts, SAMPLE_DETAILS[name]).save(path, optimize=True)
            written.append(path)
            lines.append(f"- `{path.name}`: its eye, mouth and hair edge, {DETAIL_ZOOM}x enlarged")
    if written:
        (out_dir / "README.md").write_text(
            "# Sample crops (x4, portraits512)\n\nEach `*_x4.png` row: the x4 input (nearest-neighbour), bicubic, "
            "LapSRN, ours at strength 0 and 1, the target. Each `*_x4_details.png`: close-ups of an eye, the mouth "
            f"and a hair edge ({DETAIL_CROP} px of the 512-px target, shown {DETAIL_ZOOM}x with nearest-neighbour so "
            "a grid would show): bicubic, LapSRN, ours at strength 0, 0.5 and 1, the target. Written by "
            "`python -m superres evaluate`; these are outputs of the methods, made from validation portraits (never "
            "used in training):\n\n" + "\n".join(lines) + "\n")
    return written


# ---- reports ---------------------------------------------------------------------------------------
def load_report(path) -> dict:
    return json.loads(Path(path).read_text())


def tasks_in(report: dict) -> list[tuple[str, int]]:
    seen = []
    for r in report["quality"]:
        if (r["set"], r["scale"]) not in seen:
            seen.append((r["set"], r["scale"]))
    return seen


def quality_table(report: dict, set_name: str, scale: int) -> list[dict]:
    """The rows of one (set, scale), in method order, each with `label` and `delta_psnr` vs bicubic."""
    rows = [r for r in report["quality"] if (r["set"], r["scale"]) == (set_name, scale)]
    order = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: (order.get(r["method"], 99), -1 if r["strength"] is None else r["strength"]))
    bic = find(rows, set_name, scale, "bicubic")
    return [{**r, "label": label(r["method"], r["strength"]),
             "delta_psnr": None if bic is None else round(r["psnr_y"] - bic["psnr_y"], 2)} for r in rows]


def _fmt(v, digits):
    return "–" if v is None else f"{v:.{digits}f}"


def set_title(set_name: str) -> str:
    return {"portraits512": "portraits/valid at 512 px", "portraits512_jpeg40": "portraits/valid at 512 px, "
            "LR as JPEG q40"}.get(set_name, set_name)


def markdown_report(report: dict) -> str:
    m = report["machine"]
    card = report.get("model_card")
    lines = ["# Evaluation", "",
             f"Made by `{report['command']}` on {report['created']} ({m['cpu']}, {m['cores']} cores, "
             f"load average {m['loadavg_start']} at the start).", ""]
    if card:
        name, sha = next(iter(card["sha256"].items()), ("", ""))
        lines += [f"Model: `{card['name']}` created {card.get('created')} ({card['dir']}; "
                  f"{name} sha256 {sha[:12]}…), default strength {card.get('default_strength')}.", ""]
        if card.get("untrained"):
            lines += ["**These are random-weight (untrained) models: a pipeline check, not results.**", ""]
    lines += [f"PSNR and SSIM on Y (BT.601) with `scale` pixels shaved; HaarPSI (piq, RGB, weight-free; higher is "
              "better); HF ratio = RMS of the Laplacian of Y, output over target (< 1 smoother than the target, > 1 "
              "added texture); lattice = the strongest 2/4/8-px grid peak of the output's spectrum relative to the "
              "target's (1 = none added); spectral = distance of the output's detail spectrum from the target's (0 = "
              "the same). Means over the images (medians for lattice and spectral); Δ = PSNR minus bicubic's.", ""]
    if report.get("targets"):
        lines += ["## Targets", "", "| target | measured | required | met |", "| --- | ---: | ---: | :---: |"]
        for t in report["targets"]:
            met = {True: "yes", False: "**no**", None: "not measured"}[t["passed"]]
            lines.append(f"| {t['description'].replace('|', chr(92) + '|')} | {_fmt(t['measured'], 3)} | {_fmt(t['required'], 3)} | {met} |")
        lines.append("")
    for set_name, scale in tasks_in(report):
        rows = quality_table(report, set_name, scale)
        lines += [f"## {set_title(set_name)} ×{scale} ({rows[0]['n_images']} images)", "",
                  f"| method | PSNR(Y) dB | Δ dB | SSIM(Y) | {PERCEPTUAL_TITLE} | HF ratio | lattice | spectral |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            lines.append(f"| {r['label']} | {r['psnr_y']:.2f} | {_fmt(r['delta_psnr'], 2)} | {r['ssim_y']:.4f} | "
                         f"{r[PERCEPTUAL]:.4f} | {r['hf_ratio']:.3f} | {_fmt(r.get('lattice'), 2)} | "
                         f"{_fmt(r.get('spectral'), 3)} |")
        lines.append("")
    if report.get("speed"):
        sp = report["speed"][0]
        lines += [f"## Speed ({sp['input']} input, median of runs after a warm-up; each method in its own process)", "",
                  "| method | scale | output | s / image | MP/s (output) | peak RSS MB | load s | runs |",
                  "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in report["speed"]:
            opt = f", tile={r['options']['tile']}" if r["options"].get("tile") is not None else ""
            lines.append(f"| {label(r['method'], r['strength'])}{opt} | ×{r.get('scale', 4)} | {r['output']} | "
                         f"{r['seconds_per_image']:.3f} | {r['megapixels_per_s']:.2f} | {r['peak_rss_mb']:.0f} | "
                         f"{r['load_seconds']:.2f} | {r['runs']} |")
        lines += ["", "Timings depend on what else runs on the machine (see the load average above).", ""]
    lines += ["Data: portraits from ../shared/data/portraits/valid (Face Research Lab London Set, CC BY 4.0; "
              "inter-faces, CC0); Set5, Set14, BSD100 as collected by SelfExSR (Huang et al., CVPR 2015); peers: "
              "OpenCV dnn_superres models (Apache-2.0).", ""]
    return "\n".join(lines)



def latex_quality_table(report: dict, set_name: str, scale: int) -> str:
    """A booktabs tabular for one (set, scale); the best PSNR/SSIM/HaarPSI in bold."""
    rows = quality_table(report, set_name, scale)
    best = {k: max(r[k] for r in rows) for k in ("psnr_y", "ssim_y", PERCEPTUAL)}

    def cell(r, k, d):
        s = f"{r[k]:.{d}f}"
        return f"\\textbf{{{s}}}" if r[k] == best[k] else s
    out = ["\\begin{tabular}{lrrrr}", "\\toprule",
           f"Method & PSNR(Y) & SSIM(Y) & {PERCEPTUAL_TITLE} & HF ratio \\\\", "\\midrule"]
    for r in rows:
        out.append(f"{r['label']} & {cell(r, 'psnr_y', 2)} & {cell(r, 'ssim_y', 4)} & "
                   f"{cell(r, PERCEPTUAL, 4)} & {r['hf_ratio']:.3f} \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out)


def latex_speed_table(report: dict) -> str:
    out = ["\\begin{tabular}{lrrr}", "\\toprule", "Method & s/image & MP/s & peak RSS (MB) \\\\", "\\midrule"]
    for r in report["speed"]:
        opt = " (whole image)" if r["options"].get("tile") == 0 else ""
        out.append(f"{label(r['method'], r['strength'])}{opt} & {r['seconds_per_image']:.3f} & "
                   f"{r['megapixels_per_s']:.2f} & {r['peak_rss_mb']:.0f} \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out)


def report_tables(report) -> dict:
    """Everything the write-up needs from evaluation.json (a dict or a path): {(set, scale): rows},
    the speed rows and the targets."""
    report = load_report(report) if not isinstance(report, dict) else report
    return {"quality": {task: quality_table(report, *task) for task in tasks_in(report)},
            "speed": report.get("speed", []), "targets": report.get("targets", [])}


# ---- machine and model -----------------------------------------------------------------------------
def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("numpy", "PIL", "onnxruntime", "cv2", "torch", "piq"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            pass
    try:
        threads = len(os.sched_getaffinity(0))
    except AttributeError:
        threads = os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "platform": platform.platform(),
            "python": platform.python_version(), "loadavg_start": round(os.getloadavg()[0], 2),
            "versions": versions}


def model_card_info(model_dir, card) -> dict | None:
    if card is None:
        return None
    return {"dir": str(model_dir), "name": card.get("name"), "created": card.get("created"),
            "package_version": card.get("package_version"), "untrained": bool(card.get("untrained", False)),
            "default_strength": float(card["default_strength"]), "networks": card.get("networks", {}),
            "sha256": card.get("sha256", {})}


# ---- CLI -------------------------------------------------------------------------------------------
def _csv_list(kind, choices=None):
    def parse(s):
        items = [kind(x) for x in s.split(",") if x.strip()]
        if choices is not None:
            bad = [x for x in items if x not in choices]
            if bad:
                raise ValueError
        return items
    parse.__name__ = "list"
    return parse


def add_arguments(p):
    p.add_argument("--data-root", default=None,
                   help="folder with portraits/, benchmarks/ and peers/ (default: ../shared/data next to the repo)")
    p.add_argument("--model-dir", default=None, help="model folder (default: superres/default_model)")
    p.add_argument("--out", default=None, help="output folder (default: Code/results/)")
    p.add_argument("--sets", type=_csv_list(str, SETS), default=list(SETS), help="comma-separated: " + ",".join(SETS))
    p.add_argument("--scales", type=_csv_list(int, SCALES), default=list(SCALES), help="comma-separated: 4,2")
    p.add_argument("--methods", type=_csv_list(str, METHODS), default=list(METHODS),
                   help="comma-separated: " + ",".join(METHODS))
    p.add_argument("--strengths", type=_csv_list(float), default=list(STRENGTHS),
                   help="strengths for `ours` (default 0,0.5,1; the model's default strength is added)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of each set")
    p.add_argument("--no-speed", action="store_true", help="skip the timing")
    p.add_argument("--no-samples", action="store_true", help="write no sample crops")
    p.add_argument("--speed-runs", type=int, default=5, help="timed runs per method after a warm-up (default 5)")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes for the quality part, one thread each (default: the CPU count, at most 8)")


def command_line(args) -> str:
    """The command that reproduces this run (the options that differ from the defaults)."""
    import argparse
    ref = argparse.ArgumentParser()
    add_arguments(ref)
    parts = ["python", "-m", "superres", "evaluate"]
    for action in ref._actions:
        if not action.option_strings or action.dest == "help":
            continue
        v = getattr(args, action.dest, action.default)
        if v == action.default:
            continue
        if isinstance(action.const, bool) or action.nargs == 0:
            parts.append(action.option_strings[0])
        else:
            parts += [action.option_strings[0], ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
                      if isinstance(v, list) else str(v)]
    return shlex.join(parts)


def run(args) -> int:
    try:
        return _run(args)
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    t_all = time.perf_counter()
    data_root = Path(args.data_root) if args.data_root else default_data_root()
    out = Path(args.out) if args.out else default_out()
    check_data(data_root, args.sets, args.scales, args.methods)
    model_dir, card = None, None
    strengths = sorted({round(float(s), 2) for s in args.strengths})
    if "ours" in args.methods:
        from . import DEFAULT_MODEL_DIR
        from .inference import ModelError, verify_model_dir
        model_dir = Path(args.model_dir) if args.model_dir else DEFAULT_MODEL_DIR
        try:
            card = verify_model_dir(model_dir)
        except ModelError as e:
            raise EvaluationError(f"{e} (or leave `ours` out of --methods)") from e
        strengths = sorted(set(strengths) | {round(float(card["default_strength"]), 2)})
    if any(not 0 <= s <= 1 for s in strengths):
        raise EvaluationError("--strengths must lie between 0 and 1")
    tasks = [(s, sc) for s in args.sets for sc in args.scales if sc in available_scales(data_root, s)]
    if card is not None:
        tasks = [t for t in tasks if str(t[1]) in card["networks"]]
    n_methods = len(args.methods) - ("ours" in args.methods) + ("ours" in args.methods) * len(strengths)
    report = {"format": FORMAT, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": command_line(args), "data_root": str(data_root), "limit": args.limit,
              "machine": machine_info(), "model_card": model_card_info(model_dir, card)}
    print(f"evaluate: {len(tasks)} set/scale pairs x {n_methods} methods -> {out}", flush=True)
    samples = () if args.no_samples else SAMPLE_IMAGES
    if samples and args.limit:   # a short run: sample whatever portraits it has
        samples = tuple(p.stem for p in image_names(data_root, "portraits512", SPEED_SCALE, min(args.limit, 2)))
    quality, per_image, kept = evaluate_quality(data_root, tasks, args.methods, strengths, model_dir, args.limit,
                                                samples, jobs=args.jobs)
    report["quality"] = quality
    speed = []
    if not args.no_speed:
        _log("speed (each method in its own process):")
        speed = measure_speed(args.methods, data_root, model_dir, runs=args.speed_runs)
    report["speed"] = speed
    report["targets"] = check_targets(quality, speed, card.get("default_strength", 0.5) if card else 0.5)
    report["machine"]["loadavg_end"] = round(os.getloadavg()[0], 2)
    report["seconds"] = round(time.perf_counter() - t_all, 1)

    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(report, indent=1) + "\n")
    md = markdown_report(report)
    (out / "evaluation.md").write_text(md)
    with open(out / "evaluation_per_image.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["set", "scale", "method", "strength", "image", *SCORES])
        w.writeheader()
        for r in per_image:
            w.writerow({**r, **{k: round(r[k], 5) for k in SCORES}})
    written = write_samples(kept, out / "samples") if kept else []
    print(md)
    print(f"wrote {out / 'evaluation.json'}, evaluation.md, evaluation_per_image.csv"
          + (f" and {len(written)} sample grids" if written else "") + f" in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__" and sys.argv[1:] == ["--speed-worker"]:
    _speed_worker()
