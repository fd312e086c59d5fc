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

`input_kind` then tells two kinds of compressed input apart by their `sharpness` (mean |Laplacian| over mean
|gradient| of the luma, which blur lowers): a sharp photo that was only JPEG-compressed ("jpeg"; the JPEG-trained
faithful network restores it best), and a photo that was also blurred, resized and noised before it was sent on
as a JPEG ("real", the usual case; the general faithful network does better there).

The thresholds (STEP_FOR_JPEG_NETWORK, SHARP_JPEG) were set on training photos, JPEG-compressed at each quality
and degraded by the real-world chain; the clean evaluation sets' inputs are never flagged, portraits512_jpeg40's
always are (docs/decisions.md has the counts).
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
SHARP_JPEG = 1.7                # sharpness from which a compressed input counts as only JPEG-compressed


def _centre(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    y0, x0 = max(0, (h - MAX_SIDE) // 16 * 8), max(0, (w - MAX_SIDE) // 16 * 8)   # stays on the block grid
    return rgb[y0:y0 + min(h, MAX_SIDE), x0:x0 + min(w, MAX_SIDE)]


def _step_on_grid(rgb: np.ndarray) -> int:
    """`jpeg_step` for the block grid that starts at the top-left corner of `rgb`."""
    crop = _centre(rgb[:rgb.shape[0] // 8 * 8, :rgb.shape[1] // 8 * 8])
    luma = crop.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) - 128   # JPEG's Y, centred
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
    y = _centre(rgb).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if min(y.shape) < 3:
        return 0.0
    grad = (np.abs(np.diff(y, axis=1)).mean() + np.abs(np.diff(y, axis=0)).mean()) / 2
    lap = np.abs(4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]).mean()
    return float(lap / grad) if grad > 0 else 0.0


def input_kind(rgb: np.ndarray) -> str:
    """"clean" (no JPEG quantisation of quality ~75 or lower), "jpeg" (compressed, otherwise sharp) or "real"
    (compressed and soft: blurred, resized or denoised before it was compressed)."""
    if not looks_jpeg_compressed(rgb):
        return "clean"
    return "jpeg" if sharpness(rgb) >= SHARP_JPEG else "real"
