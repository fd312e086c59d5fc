"""Run an exported model folder with ONNX Runtime, on images of any size (torch-free).

`Enhancer` is the one implementation behind `python -m superres enhance` and the web app, in the spirit of
Real-ESRGAN's `RealESRGANer`:

* the model folder is checked against its card (files present, sha256 equal) before anything runs;
* each scale (x4, x2) has its own generator, which works at the input's size and ends in a PixelShuffle;
* `strength` blends that scale's faithful and GAN generators weight by weight (ESRGAN's network
  interpolation), w = (1 - s) * faithful + s * gan, with s rounded to 0.05 and one ONNX Runtime session per
  (scale, value) kept in a small LRU cache;
* images are processed in overlapping tiles: the image is padded once to the network's input multiple,
  every tile is run with `tile_pad` pixels of real context on each side, and only its centre is written
  to the output (crop, no blending), so there are no seams and memory depends on the tile size, not on
  the image. Tile edges lie on multiples of the input multiple, so the U-Net's down-sampling grid is the
  same as for the whole image; a tile as large as the image gives whole-image inference;
* alpha is resized separately (bicubic), grayscale comes back grayscale, the ICC profile is carried over.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
from PIL import Image

from . import DEFAULT_MODEL_DIR
# the model folder's contract lives in model_folder; ModelError is what Enhancer raises, so it is named here too
from .model_folder import ModelError, read_card, verify_model_dir

STRENGTH_STEP = 0.05
# Largest side (in pixels) of what one network run sees when `tile` is left to us. The U-Net's
# self-attention grows with the square of the pixel count.
MAX_NET_INPUT = 384
DEFAULT_TILE_PAD = 32


class Cancelled(Exception):
    """Raised by a `progress` callback to stop `Enhancer.enhance` at the next tile (cancel, timeout)."""


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


class Enhancer:
    """Upscale PIL images x2 or x4 with a model folder (see `superres.model_folder` for its contract)."""

    def __init__(self, model_dir=None, threads: int = 0, cache_size: int = 4, verify: bool = True):
        self.model_dir = Path(model_dir) if model_dir else DEFAULT_MODEL_DIR
        self.card = verify_model_dir(self.model_dir) if verify else read_card(self.model_dir)
        self.multiple = int(self.card["input_multiple"])
        self.scales = sorted(int(s) for s in self.card["networks"])
        self.default_strength = float(self.card["default_strength"])
        self.threads = int(threads)
        self._paths, self._faithful, self._delta = {}, {}, {}   # per scale: its two files, weights, gan - faithful
        for scale in self.scales:
            entry = self.card["networks"][str(scale)]
            paths = {k: self.model_dir / entry[k] for k in ("faithful", "gan")}
            try:
                faithful, gan = _initializers(paths["faithful"]), _initializers(paths["gan"])
            except Exception as e:
                raise ModelError(f"Could not read the ONNX files in {self.model_dir} ({e}).") from e
            if faithful.keys() != gan.keys():
                raise ModelError(f"{entry['faithful']} and {entry['gan']} have different initializers, so they "
                                 "cannot be blended; re-export both from the same architecture.")
            # keep only the difference (gan - faithful) of tensors that differ: the blend is f + s * d
            self._paths[scale], self._faithful[scale] = paths, faithful
            self._delta[scale] = {k: (gan[k].astype(np.float32) - v.astype(np.float32))
                                  for k, v in faithful.items()
                                  if np.issubdtype(v.dtype, np.floating) and not np.array_equal(v, gan[k])}
            del gan
        self._cache_size = max(1, int(cache_size))
        self._sessions: OrderedDict[tuple, ort.InferenceSession] = OrderedDict()
        self._lock = threading.Lock()
        for scale in self.scales:   # fail now, not on the first request
            self.generator(scale, self.default_strength)

    # ---- sessions ------------------------------------------------------------------------------------
    def _options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # tiles of different sizes fragment the arena; without it memory is returned after each run
        so.enable_cpu_mem_arena = False
        # idle ORT threads sleep instead of spinning: the event loop and other requests keep their CPU
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so

    def _session(self, path: Path, so: ort.SessionOptions | None = None) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(str(path), so or self._options(), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"ONNX Runtime could not load {path} ({e}).") from e

    @staticmethod
    def round_strength(strength: float) -> float:
        return round(round(float(strength) / STRENGTH_STEP) * STRENGTH_STEP, 2)

    def generator(self, scale: int, strength: float) -> ort.InferenceSession:
        """The x`scale` generator for `strength` (rounded to 0.05), from the LRU cache or built now."""
        key = (int(scale), self.round_strength(strength))
        with self._lock:
            if key in self._sessions:
                self._sessions.move_to_end(key)
                return self._sessions[key]
        scale, s = key
        if s == 0.0:
            sess = self._session(self._paths[scale]["faithful"])
        elif s == 1.0:
            sess = self._session(self._paths[scale]["gan"])
        else:
            sess = self._blended_session(scale, s)
        with self._lock:
            self._sessions[key] = sess
            self._sessions.move_to_end(key)
            while len(self._sessions) > self._cache_size:
                self._sessions.popitem(last=False)
        return sess

    def _blended_session(self, scale: int, s: float) -> ort.InferenceSession:
        """A session for faithful + s * (gan - faithful), built from a rewritten copy of the faithful model.

        (ORT's SessionOptions.add_initializer looked like the cheaper way, but measured against torch it left
        most of the blend out: at s = 0.5 the output moved 0.04 grey levels instead of 1.7.)"""
        import onnx
        from onnx import numpy_helper
        model = onnx.load(str(self._paths[scale]["faithful"]))
        faithful, delta = self._faithful[scale], self._delta[scale]
        for t in model.graph.initializer:
            d = delta.get(t.name)
            if d is not None:
                # the blend stays float32, also where the file stores float16 (its Cast to float32 then
                # changes nothing), so the blend adds no rounding of its own
                w = faithful[t.name].astype(np.float32) + np.float32(s) * d
                t.CopyFrom(numpy_helper.from_array(w, t.name))
        try:
            return ort.InferenceSession(model.SerializeToString(), self._options(),
                                        providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"ONNX Runtime could not build the x{scale} strength-{s} generator ({e}).") from e

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
        to 32 rows, so it costs what a 512-megapixel one would."""
        tile, pad, ys, xs = self.tiles(width, height, tile, tile_pad)
        m = self.multiple
        hp, wp = -(-height // m) * m, -(-width // m) * m
        rows = sum(min(y + tile + pad, hp) - max(y - pad, 0) for y in ys)
        cols = sum(min(x + tile + pad, wp) - max(x - pad, 0) for x in xs)
        return rows * cols

    def enhance_array(self, rgb: np.ndarray, scale: int = 4, strength: float | None = None,
                      tile: int | None = None, tile_pad: int = DEFAULT_TILE_PAD,
                      progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (scale*H, scale*W, 3) uint8 RGB.

        tile: side of the tile centres in input pixels (None: automatic, bounded memory; 0: whole image).
        tile_pad: context added on each side of a tile, in input pixels.
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
        ph, pw = -h % m, -w % m
        if ph or pw:   # the same padding as superres.models.pad_to_multiple
            mode = "reflect" if (ph < h and pw < w) else "edge"
            rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode=mode)
        hp, wp = rgb.shape[:2]
        net = self.generator(scale, strength)

        out = np.empty((h * scale, w * scale, 3), np.uint8)
        done = 0
        for y0 in ys:
            for x0 in xs:
                wy0, wy1 = max(y0 - pad, 0), min(y0 + tile + pad, hp)
                wx0, wx1 = max(x0 - pad, 0), min(x0 + tile + pad, wp)
                x = rgb[wy0:wy1, wx0:wx1].transpose(2, 0, 1)[None].astype(np.float32) * np.float32(1 / 255)
                x = net.run(None, {"input": x})[0]
                cy1, cx1 = min(y0 + tile, h), min(x0 + tile, w)
                core = x[0, :, (y0 - wy0) * scale:(cy1 - wy0) * scale, (x0 - wx0) * scale:(cx1 - wx0) * scale]
                core = core * np.float32(255) + np.float32(0.5)
                np.clip(core, 0, 255, out=core)
                out[y0 * scale:cy1 * scale, x0 * scale:cx1 * scale] = core.transpose(1, 2, 0)
                done += 1
                if progress:
                    progress(done, total)
        return out

    def enhance(self, image: Image.Image, scale: int = 4, strength: float | None = None,
                tile: int | None = None, tile_pad: int = DEFAULT_TILE_PAD,
                progress: Callable[[int, int], None] | None = None) -> Image.Image:
        """Upscale an RGB, RGBA, L or LA image (other modes are converted to RGB/RGBA first)."""
        self._check(scale, strength)
        mode = image.mode
        if mode not in ("RGB", "RGBA", "L", "LA"):
            mode = "RGBA" if "A" in mode or "transparency" in image.info else "RGB"
            image = image.convert(mode)
        rgb = np.asarray(image.convert("RGB") if mode != "RGB" else image)
        big = self.enhance_array(rgb, scale, strength, tile, tile_pad, progress)
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
