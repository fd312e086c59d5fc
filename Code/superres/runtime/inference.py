"""Run an exported model folder with ONNX Runtime, on images of any size (torch-free).

`Enhancer` is the one implementation behind `python -m superres enhance` and the web app, in the spirit of
Real-ESRGAN's `RealESRGANer`:

* the model folder is checked against its card (files present, sha256 equal) before anything runs;
* each scale (x4, x2) has its own generator, which works at the input's size and ends in a PixelShuffle;
* `strength` blends the *outputs* of that scale's faithful and GAN generators, (1 - s) * faithful(x) +
  s * gan(x), with s rounded to 0.05 (the slider's step); at 0 or 1 only one network runs, in between both
  do. The outputs are blended, not the weights (ESRGAN's network interpolation, one network run): networks
  interpolated weight by weight draw a grid that neither end has (docs/decisions.md);
* a blend of a small image (one tile of at most `PAIR_MAX_PIXELS`) runs its two networks side by side, each on
  half the threads (`_paired`): ONNX Runtime's convolutions gain much less than twice from a second core, so
  two one-thread runs at once beat two two-thread runs in turn. Larger images run them in turn, so their peak
  memory stays that of one tile run;
* the input's kind is read from its pixels before tiling (`superres.runtime.compression.input_kind`, up to a centred
  1024 px crop): "clean", "jpeg" (JPEG-compressed, otherwise sharp) or "real" (soft: blurred or resized,
  compressed or not; or noisy and sent on as a light JPEG). A scale may have more networks for them:
  `xS_faithful_jpeg` (trained on JPEG inputs) stands in for the faithful network on "jpeg" inputs,
  `xS_faithful_real` and `xS_gan_real` (trained on the real-world chain, `superres.training.degradations`) for
  the faithful and GAN ones on "real" inputs;
  `jpeg=True/False` overrides the detection ("jpeg" / "clean");
* images are processed in overlapping tiles: the image is padded once to the network's input multiple,
  every tile is run with `tile_pad` pixels of real context on each side, and only its centre is written
  to the output (crop, no blending), so there are no seams and memory depends on the tile size, not on
  the image. Tile edges lie on multiples of the input multiple, so the U-Net's down-sampling grid is the
  same as for the whole image; a tile as large as the image gives whole-image inference;
* alpha is resized separately (bicubic), grayscale comes back grayscale, the ICC profile is carried over.
"""
from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

# The model folder's contract lives in model_folder; ModelError is what Enhancer raises, so it is named here too.
from superres import DEFAULT_MODEL_DIR
from superres.runtime.compression import input_kind
from superres.runtime.model_folder import KINDS, ModelError, has_compressed_networks, read_card, verify_model_dir

STRENGTH_STEP = 0.05
# Largest side (in pixels) of what one network run sees when `tile` is left to us. The U-Net's
# self-attention grows with the square of the pixel count.
MAX_NET_INPUT = 384
DEFAULT_TILE_PAD = 32
# Largest image (pixels, padded) whose blend runs its two networks side by side: a run's memory grows with its
# input, so two runs of half the largest tile's pixels need no more than one run of that tile, and the memory
# budget (x4 of a 2000x2000 image under 1 GB) holds either way.
PAIR_MAX_PIXELS = MAX_NET_INPUT ** 2 // 2
TRIM_EVERY = 4        # tiles between two `_release_free_memory` calls


def _glibc_malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):   # not glibc (macOS, musl): nothing to do
        return None


_MALLOC_TRIM = _glibc_malloc_trim()


def _release_free_memory() -> None:
    """Hand the memory freed by the last tiles back to the OS (glibc's malloc_trim; elsewhere nothing).

    Why: glibc keeps freed tile-sized buffers (tens of MB) in its heap, where the next tiles' buffers do not always
    fit, so over a big image the process kept growing. Trimming after every TRIM_EVERY-th tile keeps a big image's
    peak near its working set for a few percent more time; trimming after every tile costs three times as much
    (docs/decisions.md). An image of one tile never trims."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # macOS, Windows
        return os.cpu_count() or 1


class Cancelled(Exception):
    """Raised by a `progress` callback to stop `Enhancer.enhance` at the next tile (cancel, timeout)."""


class Enhancer:
    """Upscale PIL images x2 or x4 with a model folder (see `superres.runtime.model_folder` for its contract)."""

    def __init__(self, model_dir=None, threads: int = 0, verify: bool = True):
        self.model_dir = Path(model_dir) if model_dir else DEFAULT_MODEL_DIR
        self.card = verify_model_dir(self.model_dir) if verify else read_card(self.model_dir)
        self.multiple = int(self.card["input_multiple"])
        self.scales = sorted(int(s) for s in self.card["networks"])
        self.default_strength = float(self.card["default_strength"])
        self.threads = int(threads)
        # every network is loaded and run once now, so a broken file stops us here, not on the first request
        entries = {s: self.card["networks"][str(s)] for s in self.scales}
        self._nets = {scale: {kind: self._session(self.model_dir / entry[kind], self.threads)
                              for kind in KINDS if kind in entry} for scale, entry in entries.items()}
        # the same networks on half the threads each, for blends run side by side (none on a single core); each
        # is opened at its first such blend, so that a run that never pairs does not pay their loading
        self._half = (self.threads or available_cores()) // 2
        self._files = {self._nets[scale][kind]: self.model_dir / entry[kind]
                       for scale, entry in entries.items() for kind in KINDS if kind in entry}
        self._paired: dict[ort.InferenceSession, ort.InferenceSession] = {}
        self._paired_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(thread_name_prefix="superres-blend") if self._half else None
        for scale, nets in self._nets.items():
            x = np.zeros((1, 3, self.multiple, self.multiple), np.float32)
            shapes = {kind: net.run(None, {"input": x})[0].shape for kind, net in nets.items()}
            if any(shape != (1, 3, scale * self.multiple, scale * self.multiple) for shape in shapes.values()):
                raise ModelError(f"The x{scale} networks in {self.model_dir} give outputs of shapes {shapes} for a "
                                 f"{self.multiple}x{self.multiple} input; all must be x{scale}.")

    # ---- sessions ------------------------------------------------------------------------------------
    @staticmethod
    def _options(threads: int) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # tiles of different sizes fragment the arena; without it memory is returned after each run
        so.enable_cpu_mem_arena = False
        # idle ORT threads sleep instead of spinning: the event loop and other requests keep their CPU
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so

    def _session(self, path: Path, threads: int) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(str(path), self._options(threads), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"ONNX Runtime could not load {path} ({e}).") from e

    def _paired_session(self, net: ort.InferenceSession) -> ort.InferenceSession:
        """`net`'s file on half the threads (see `_blend`), opened on first use."""
        with self._paired_lock:
            if net not in self._paired:
                self._paired[net] = self._session(self._files[net], self._half)
            return self._paired[net]

    @staticmethod
    def round_strength(strength: float) -> float:
        return round(round(float(strength) / STRENGTH_STEP) * STRENGTH_STEP, 2)

    def has_jpeg_network(self, scale: int) -> bool:
        return "faithful_jpeg" in self._nets.get(int(scale), {})

    def networks(self, scale: int, strength: float, kind: str = "clean") -> list[tuple[float, ort.InferenceSession]]:
        """What the x`scale` output at `strength` (rounded to 0.05) is blended from: (weight, network) pairs,
        one network at 0 or 1, both in between, for an input of `kind` ("clean", "jpeg" or "real"; see
        `input_kind`): the JPEG-trained faithful network for "jpeg", the real-world ones for "real", where the
        scale has them. (On sharp JPEG inputs the real-world networks did worse than the general ones:
        docs/decisions.md.)"""
        if kind not in ("clean", "jpeg", "real"):
            raise ValueError(f"kind must be clean, jpeg or real, got {kind!r}")
        s, nets = self.round_strength(strength), self._nets[int(scale)]
        faithful = {"jpeg": nets.get("faithful_jpeg"), "real": nets.get("faithful_real")}.get(kind) or nets["faithful"]
        gan = nets.get("gan_real", nets["gan"]) if kind == "real" else nets["gan"]
        if s == 0.0:
            return [(1.0, faithful)]
        if s == 1.0:
            return [(1.0, gan)]
        return [(1.0 - s, faithful), (s, gan)]

    def input_kind(self, rgb: np.ndarray, scale: int, jpeg: bool | None = None) -> str:
        """The kind of this (H, W, 3) uint8 input for the x`scale` networks: "jpeg" / "clean" if `jpeg` is True /
        False, else read from its pixels (`superres.runtime.compression.input_kind`; only where the scale has a network
        for compressed inputs: otherwise "clean")."""
        if jpeg is not None:
            return "jpeg" if jpeg else "clean"
        if not has_compressed_networks(self.card, scale):
            return "clean"
        return input_kind(rgb)

    def _blend(self, nets, x: np.ndarray, side_by_side: bool = False) -> np.ndarray:
        """The weighted sum of the networks' outputs for one input (float32, as the networks compute); with
        `side_by_side`, two networks run at once on their half-thread sessions where there are any."""
        (w0, net0), *rest = nets
        if not rest:
            return net0.run(None, {"input": x})[0]
        (w1, net1), = rest
        if side_by_side and self._pool:
            second = self._pool.submit(self._paired_session(net1).run, None, {"input": x})
            y = self._paired_session(net0).run(None, {"input": x})[0]
            z = second.result()[0]
        else:
            y = net0.run(None, {"input": x})[0]
            z = net1.run(None, {"input": x})[0]
        y *= np.float32(w0)   # in place: two output-sized arrays at a time, not five
        z *= np.float32(w1)
        y += z
        return y

    # ---- inference -----------------------------------------------------------------------------------
    def auto_tile(self, tile_pad: int = DEFAULT_TILE_PAD) -> int:
        """The largest tile whose network run (tile + context) stays within MAX_NET_INPUT pixels a side."""
        t = MAX_NET_INPUT - 2 * tile_pad
        return max(self.multiple, t // self.multiple * self.multiple)

    def _check(self, scale: int, strength) -> float:
        if int(scale) not in self.scales:
            raise ValueError(f"scale must be one of {self.scales}, got {scale!r}")
        strength = self.default_strength if strength is None else float(strength)
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be between 0 and 1, got {strength}")
        return strength

    def tiles(self, width: int, height: int, tile: int | None = None,
              tile_pad: int = DEFAULT_TILE_PAD) -> tuple[int, int, range, range]:
        """How an image of `width` x `height` is cut: (tile, pad, row starts, column starts), in input pixels.

        tile: side of the tile centres (None: automatic, bounded memory; 0: whole image);
        pad: context added on each side of a tile, rounded up to the input multiple."""
        m = self.multiple
        pad = -(-max(0, int(tile_pad)) // m) * m
        if tile is None:
            tile = self.auto_tile(pad)
        hp, wp = -(-height // m) * m, -(-width // m) * m
        tile = max(hp, wp) if tile <= 0 else -(-int(tile) // m) * m
        return tile, pad, range(0, height, tile), range(0, width, tile)

    def work(self, width: int, height: int, tile: int | None = None, tile_pad: int = DEFAULT_TILE_PAD) -> int:
        """The pixels the network runs on for one image: every tile with its context, on the padded image.

        This, not width x height, is what an image costs in time and memory: a 1 x 16,000,000 image is padded
        to 32 rows, so it costs what a 512-megapixel one would. It counts one network: a strength strictly
        between 0 and 1 runs two, so such a job takes about twice as long (the web app's size limit, which
        compares work with work, does not depend on the strength)."""
        tile, pad, ys, xs = self.tiles(width, height, tile, tile_pad)
        m = self.multiple
        hp, wp = -(-height // m) * m, -(-width // m) * m
        rows = sum(min(y + tile + pad, hp) - max(y - pad, 0) for y in ys)
        cols = sum(min(x + tile + pad, wp) - max(x - pad, 0) for x in xs)
        return rows * cols

    def enhance_array(self, rgb: np.ndarray, scale: int = 4, strength: float | None = None,
                      tile: int | None = None, tile_pad: int = DEFAULT_TILE_PAD,
                      progress: Callable[[int, int], None] | None = None, jpeg: bool | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (scale*H, scale*W, 3) uint8 RGB.

        tile: side of the tile centres in input pixels (None: automatic, bounded memory; 0: whole image).
        tile_pad: context added on each side of a tile, in input pixels.
        jpeg: treat the input as JPEG-compressed and sharp (True: the scale's JPEG-trained faithful network and its
        real-world GAN), as clean (False), or read its kind from its pixels (None; see `input_kind`).
        progress(done, total) is called before the first tile and after each one; it may raise (the web app
        raises `Cancelled`) to stop the work at the next tile."""
        strength = self._check(scale, strength)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError("expected an (H, W, 3) uint8 array")
        m = self.multiple
        h, w = rgb.shape[:2]
        tile, pad, ys, xs = self.tiles(w, h, tile, tile_pad)
        total = len(ys) * len(xs)
        if progress:
            progress(0, total)
        nets = self.networks(scale, strength, self.input_kind(rgb, scale, jpeg))
        ph, pw = -h % m, -w % m
        if ph or pw:   # the same padding as superres.training.models.pad_to_multiple
            mode = "reflect" if (ph < h and pw < w) else "edge"
            rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode=mode)
        hp, wp = rgb.shape[:2]
        side_by_side = total == 1 and hp * wp <= PAIR_MAX_PIXELS

        out = np.empty((h * scale, w * scale, 3), np.uint8)
        done = 0
        for y0 in ys:
            for x0 in xs:
                wy0, wy1 = max(y0 - pad, 0), min(y0 + tile + pad, hp)
                wx0, wx1 = max(x0 - pad, 0), min(x0 + tile + pad, wp)
                x = rgb[wy0:wy1, wx0:wx1].transpose(2, 0, 1)[None].astype(np.float32) * np.float32(1 / 255)
                y = self._blend(nets, x, side_by_side)
                cy1, cx1 = min(y0 + tile, h), min(x0 + tile, w)
                core = y[0, :, (y0 - wy0) * scale:(cy1 - wy0) * scale, (x0 - wx0) * scale:(cx1 - wx0) * scale]
                core *= np.float32(255)   # in place on the network's output: no tile-sized copies
                core += np.float32(0.5)
                np.clip(core, 0, 255, out=core)
                out[y0 * scale:cy1 * scale, x0 * scale:cx1 * scale] = core.transpose(1, 2, 0)
                done += 1
                if done % TRIM_EVERY == 0 and done < total:
                    _release_free_memory()
                if progress:
                    progress(done, total)
        return out

    def enhance(self, image: Image.Image, scale: int = 4, strength: float | None = None,
                tile: int | None = None, tile_pad: int = DEFAULT_TILE_PAD,
                progress: Callable[[int, int], None] | None = None, jpeg: bool | None = None) -> Image.Image:
        """Upscale an RGB, RGBA, L or LA image (other modes are converted to RGB/RGBA first); the arguments are
        `enhance_array`'s."""
        self._check(scale, strength)
        mode = image.mode
        if mode not in ("RGB", "RGBA", "L", "LA"):
            mode = "RGBA" if "A" in mode or "transparency" in image.info else "RGB"
            image = image.convert(mode)
        rgb = np.asarray(image.convert("RGB") if mode != "RGB" else image)
        big = self.enhance_array(rgb, scale, strength, tile, tile_pad, progress, jpeg)
        size = (image.width * scale, image.height * scale)
        result = Image.fromarray(big, "RGB")
        del big
        if mode in ("L", "LA"):
            result = result.convert("L")
        if mode in ("RGBA", "LA"):
            result.putalpha(image.getchannel("A").resize(size, Image.Resampling.BICUBIC))
        icc = image.info.get("icc_profile")
        if icc:
            result.info["icc_profile"] = icc
        return result
