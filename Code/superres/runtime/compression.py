"""Does an image carry JPEG compression? Read from its pixels, not its file (torch-free).

JPEG stores each 8x8 block of luma as DCT coefficients rounded to multiples of a quantisation step. Decoding
does not undo that: the DCT of the decoded 8x8 blocks still sits on multiples of the step, give or take the
rounding of the pixels. `jpeg_step` looks for that step in the coefficients (1,0) and (1,1), which the standard
(IJG) table quantises alike: 12 x the quality scale, i.e. 6 at quality 75, 15 at 40, 30 at 20 (2 at 90, which
is below what it looks for). A photo that was never compressed has no such step.

Why from the pixels: an image saved as PNG after being a JPEG (screenshots, messengers, editors) keeps its
artefacts but not its quantisation tables, and `Enhancer.enhance_array` gets pixels. The block grid may start
at any corner (an EXIF rotation turns the image after decoding), so all four are tried. What it misses: a JPEG
that was resized or cropped off the 8-pixel grid afterwards (its blocks no longer align), CMYK JPEGs, and inputs
under ~50 px a side (too few coefficients); those get the general network, which was also trained on JPEGs.
What it must not flag: smooth gradients and flat synthetic images, whose blocks all have the same coefficients
(they sit on "multiples" of many steps): a step counts only if the coefficients fill several of its multiples.

`input_kind` then reads its `sharpness` (mean |Laplacian| over mean |gradient| of the luma, which blur lowers) and,
for a light JPEG, its `flat_noise`: a soft input, or a noisy one sent on as a light JPEG ("real": blurred, resized
or noised; the real-world networks restore it best), a sharp compressed one ("jpeg": only JPEG-compressed; the
JPEG-trained faithful network) and the rest ("clean"). Noise raises the Laplacian, so a noisy photo can read as
sharp; it shows instead where the picture is flat, evenly over the image (texture is busier in some blocks than
others). Only light JPEGs get that test: without a JPEG step the clean sets' textured photos would read as noisy.

The thresholds (STEP_FOR_JPEG_NETWORK, SHARP, NOISE_FLAT, NOISE_EVEN) were set on training photos, JPEG-compressed
at each quality and degraded by the real-world chain; the clean evaluation sets' inputs are never flagged (their
sharpness is 1.82 or more, and none shows a JPEG step), portraits512_jpeg40's always are (docs/decisions.md has
the counts).
"""
from __future__ import annotations

import numpy as np

# The DCT-II basis of JPEG (orthonormal for 8x8): coefficients = C @ block @ C.T
_DCT = np.array([[np.sqrt((1 if u == 0 else 2) / 8) * np.cos((2 * x + 1) * u * np.pi / 16) for x in range(8)]
                 for u in range(8)], np.float32)
_POSITIONS = ((1, 0), (1, 1))   # coefficients with the same step in the IJG luma table (12 x scale)
MAX_STEP = 40                   # the IJG step of these coefficients at quality ~15
MIN_VALUES = 50                 # nonzero coefficients needed before a step is believed
MIN_MULTIPLES = 3               # ... spread over at least this many multiples of it, each with 5 or more
PERIODICITY = 0.5               # mean of cos(2 pi c / step): ~0.9 on a JPEG's step, ~0 at random
MAX_SIDE = 1024                 # a centred crop this large (aligned to the 8-px grid) is plenty of blocks
STEP_FOR_JPEG_NETWORK = 6       # step 6 = IJG quality 75: from here down, the input counts as compressed
SHARP = 1.7                     # sharpness below which an input counts as soft ("real"), compressed or not
NOISE_FLAT = 2.4                # flat_noise (0-255 units) from which a light JPEG counts as noisy ...
NOISE_EVEN = 1.5                # ... if its median block is at most this times as busy as its flattest tenth


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)   # JPEG's Y (BT.601)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """The float32 luma of an (H, W, 3) image's centred crop of at most MAX_SIDE."""
    return _centre(rgb).astype(np.float32) @ _LUMA


def _centre(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    y0, x0 = max(0, (h - MAX_SIDE) // 16 * 8), max(0, (w - MAX_SIDE) // 16 * 8)   # stays on the block grid
    return rgb[y0:y0 + min(h, MAX_SIDE), x0:x0 + min(w, MAX_SIDE)]


def _step_on_grid(rgb: np.ndarray) -> int:
    """`jpeg_step` for the block grid that starts at the top-left corner of `rgb`."""
    crop = _centre(rgb[:rgb.shape[0] // 8 * 8, :rgb.shape[1] // 8 * 8])
    luma = crop.astype(np.float32) @ _LUMA - 128   # JPEG's Y, centred
    blocks = luma.reshape(luma.shape[0] // 8, 8, luma.shape[1] // 8, 8).transpose(0, 2, 1, 3)
    coefs = np.concatenate([np.einsum("x,abxy,y->ab", _DCT[u], blocks, _DCT[v]).ravel() for u, v in _POSITIONS])
    # the largest step whose multiples the coefficients sit on (its divisors fit as well: look from the top)
    for step in range(MAX_STEP, 2, -1):
        c = coefs[np.abs(coefs) > step / 2]   # zeros are multiples of every step: they tell nothing
        if len(c) < MIN_VALUES or np.cos(2 * np.pi * c / step).mean() <= PERIODICITY:
            continue
        _, counts = np.unique(np.round(c / step), return_counts=True)
        if (counts >= 5).sum() >= MIN_MULTIPLES:
            return step
    return 0


def jpeg_step(rgb: np.ndarray) -> int:
    """The JPEG quantisation step found in the luma DCT coefficients (1,0) and (1,1) of an (H, W, 3) uint8
    image's 8x8 blocks, on the grid of whichever corner shows one; 0 when there is none (never compressed, or
    too small to tell). An estimate: below quality ~15 (steps over MAX_STEP) it returns a divisor of the step.
    What callers rely on is whether it reaches STEP_FOR_JPEG_NETWORK."""
    h, w = rgb.shape[:2]
    return max(_step_on_grid(rgb[oy:, ox:]) for oy in {0, h % 8} for ox in {0, w % 8})


def looks_jpeg_compressed(rgb: np.ndarray) -> bool:
    """True when the image shows JPEG quantisation of IJG quality ~75 or lower (step >= 6)."""
    return jpeg_step(rgb) >= STEP_FOR_JPEG_NETWORK


def sharpness(rgb: np.ndarray) -> float:
    """Mean |4-neighbour Laplacian| over mean |first difference| of the luma of an (H, W, 3) uint8 image (its
    centred crop of at most MAX_SIDE): about 2 for a sharp photo, lower the more it was blurred."""
    y = _luma(rgb)
    if min(y.shape) < 3:
        return 0.0
    grad = (np.abs(np.diff(y, axis=1)).mean() + np.abs(np.diff(y, axis=0)).mean()) / 2
    lap = np.abs(4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]).mean()
    return float(lap / grad) if grad > 0 else 0.0


def flat_noise(rgb: np.ndarray) -> tuple[float, float]:
    """The luma's high-pass residual (itself minus its 3x3 mean) as a standard deviation per 8x8 block of an (H, W, 3)
    uint8 image (its centred crop of at most MAX_SIDE): (the 10th percentile, the median) over the blocks. Where the
    picture is flat the first is its noise; on a clean photo it is near 0 (sharp portraits read 0.3)."""
    y = _luma(rgb)
    if min(y.shape) < 10:
        return 0.0, 0.0
    pad = np.pad(y, 1, mode="symmetric")
    residual = y - sum(pad[i:i + y.shape[0], j:j + y.shape[1]] for i in range(3) for j in range(3)) / 9
    h, w = (y.shape[0] - 2) // 8 * 8, (y.shape[1] - 2) // 8 * 8    # (the border, whose mean is padded, left out)
    blocks = residual[1:1 + h, 1:1 + w].reshape(h // 8, 8, w // 8, 8).std(axis=(1, 3))
    return float(np.percentile(blocks, 10)), float(np.median(blocks))


def looks_noisy(rgb: np.ndarray) -> bool:
    """Noise evenly over the image: its flat blocks busy (NOISE_FLAT) and its typical block hardly busier
    (NOISE_EVEN); a textured clean photo has flat and busy blocks both."""
    flat, median = flat_noise(rgb)
    return flat >= NOISE_FLAT and median <= NOISE_EVEN * flat


def input_kind(rgb: np.ndarray) -> str:
    """"real" (soft: blurred, resized or denoised, compressed or not; or noisy and a light JPEG), else "jpeg" (JPEG
    quantisation of quality ~75 or lower) or "clean". The real-world chain leaves a quarter of its faces without a
    JPEG step of quality 75 or lower, and the clean networks draw dots from their blur and noise."""
    if 0 < sharpness(rgb) < SHARP:   # (0: flat, no gradient to judge by)
        return "real"
    step = jpeg_step(rgb)
    if step >= STEP_FOR_JPEG_NETWORK:
        return "jpeg"
    return "real" if step and looks_noisy(rgb) else "clean"
