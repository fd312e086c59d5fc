"""Does an image carry JPEG compression? Read from its pixels, not its file (torch-free).

JPEG stores each 8x8 block of luma as DCT coefficients rounded to multiples of a quantisation step. Decoding
does not undo that: the DCT of the decoded 8x8 blocks still sits on multiples of the step, give or take the
rounding of the pixels. `jpeg_step` finds that step for the two lowest vertical-frequency coefficients, (1,0)
and (1,1), which the standard (IJG) table quantises alike: 12 x quality scale, e.g. 6 at quality 75, 14 at 40,
28 at 20, 2 at 90. A photo that was never compressed has no such step.

Why from the pixels: an image saved as PNG after being a JPEG (screenshots, messengers, editors) keeps its
artefacts but not its quantisation tables, and `enhance_array` gets pixels. What it misses: a JPEG that was
resized or cropped off the 8-pixel grid afterwards (its blocks no longer align), and images under 32x32 blocks
of content; those get the general network, which was also trained on JPEG inputs.

Calibration (`~/superres-runs/v6/dctq.py`, 120 training photos, x4-downscaled, JPEG at each quality): never
compressed and qualities 90-95: no step found in any; quality 75: step 6 in 115/120 (the others too small);
quality 40: 118/120. On the evaluation sets: portraits512 and Set5/Set14/BSD100 inputs: 0 flagged;
portraits512_jpeg40: 55/55 flagged at x4 and x2.
"""
from __future__ import annotations

import numpy as np

# The DCT-II basis of JPEG (orthonormal for 8x8): coefficients = C @ block @ C.T
_DCT = np.array([[np.sqrt((1 if u == 0 else 2) / 8) * np.cos((2 * x + 1) * u * np.pi / 16) for x in range(8)]
                 for u in range(8)], np.float32)
_POSITIONS = ((1, 0), (1, 1))   # coefficients with the same step in the IJG luma table (12 x scale)
MAX_STEP = 40                   # the IJG step of these coefficients at quality ~15
MIN_VALUES = 50                 # nonzero coefficients needed before a step is believed
PERIODICITY = 0.5               # mean of cos(2 pi c / step): ~0.9 on a JPEG's step, ~0 at random
MAX_SIDE = 1024                 # a centred crop this large (aligned to the 8-px grid) is plenty of blocks
STEP_FOR_JPEG_NETWORK = 6       # step 6 = IJG quality 75: from here down, the JPEG-trained network is used


def jpeg_step(rgb: np.ndarray) -> int:
    """The JPEG quantisation step of the luma DCT coefficients (1,0) and (1,1) of an (H, W, 3) uint8 image's
    8x8 blocks (aligned to its top-left corner); 0 when there is none (never compressed, or too small to tell)."""
    h, w = rgb.shape[0] // 8 * 8, rgb.shape[1] // 8 * 8
    y0, x0 = max(0, (h - MAX_SIDE) // 16 * 8), max(0, (w - MAX_SIDE) // 16 * 8)   # stays on the block grid
    crop = rgb[y0:y0 + min(h, MAX_SIDE), x0:x0 + min(w, MAX_SIDE)]
    luma = crop.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) - 128   # JPEG's Y, centred
    blocks = luma.reshape(luma.shape[0] // 8, 8, luma.shape[1] // 8, 8).transpose(0, 2, 1, 3)
    coefs = np.concatenate([np.einsum("x,abxy,y->ab", _DCT[u], blocks, _DCT[v]).ravel() for u, v in _POSITIONS])
    # the largest step whose multiples the coefficients sit on (its divisors fit as well: look from the top)
    for step in range(MAX_STEP, 2, -1):
        c = coefs[np.abs(coefs) > step / 2]   # zeros are multiples of every step: they tell nothing
        if len(c) >= MIN_VALUES and np.cos(2 * np.pi * c / step).mean() > PERIODICITY:
            return step
    return 0


def looks_jpeg_compressed(rgb: np.ndarray) -> bool:
    """True when the image shows JPEG quantisation of IJG quality ~75 or lower (step >= 6)."""
    return jpeg_step(rgb) >= STEP_FOR_JPEG_NETWORK
