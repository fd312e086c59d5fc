"""The test sets and the methods that `python -m superres evaluate` compares (see its docstring): how each
set's (LR, HR) pairs are made, and the upscalers (PIL resizes, OpenCV's FSRCNN / ESPCN / LapSRN, ours)."""
from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .imaging import EXTENSIONS
from .results import BENCHMARK_SETS, METHODS, PORTRAIT_SETS, SCALES, label

REPO = Path(__file__).resolve().parents[2]
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
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS)
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
