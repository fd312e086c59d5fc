"""The real-world degradation chain: how a clean photo becomes the kind of input people bring.

One chain, used by training (on batches, on the training device, as a fastai `after_batch` transform) and by
evaluation (the `*_real` sets: one image at a time, seeded by its file name). Real-ESRGAN's "second-order"
model (Wang et al. 2021), milder in its resize and noise ranges (the faces people bring are phone photos passed
around, not the worst of the web), and milder again in the second round:

    round 1  blur (isotropic / anisotropic Gaussian, or generalised Gaussian) -> resize (up, down or keep, a random
             kernel) -> Gaussian or Poisson noise (grey or per channel) -> JPEG
    round 2  the same, milder, each step applied with its own probability
    final    resize to the low-resolution size (a random kernel) -> JPEG

A share of `clean_prob` inputs is plain bicubic down-scaling instead (the benchmark convention, and what a resized
clean photo is); evaluation uses none. kornia does the filtering (`filter2d`, one kernel per image) and the JPEG
(`jpeg_codec_differentiable`, the IJG tables, 4:2:0 chroma); the kernels and the noise are a few lines of torch.
Blur sigmas of round 1 are in high-resolution pixels for x4 and half that for x2 (the same blur relative to the
low-resolution pixel); round 2 works near the low resolution, so its ranges do not depend on the scale.

All randomness comes from one seed: the parameters from a CPU generator, the noise from a generator on the
image's device. On the CPU the same seed gives the same pixels on every run.
"""
from __future__ import annotations

import math
import random
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from kornia.enhance import jpeg_codec_differentiable
from kornia.filters import filter2d
from PIL import Image

KERNEL_SIZE = 21       # taps of the blur kernels (odd); covers 3 sigma of the widest blur
RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass(frozen=True)
class Round:
    """One round of blur -> resize -> noise -> JPEG. Ranges are (low, high), drawn uniformly."""
    blur_prob: float = 1.0
    blur_sigma: tuple = (0.2, 3.0)
    kernel_probs: tuple = (0.5, 0.3, 0.1, 0.1)  # isotropic, anisotropic, generalised isotropic, generalised aniso.
    beta: tuple = (0.5, 4.0)                    # shape of the generalised Gaussian (2 = Gaussian)
    resize_probs: tuple = (0.2, 0.7, 0.1)       # up, down, keep
    resize_range: tuple = (0.3, 1.5)            # factor: round 1 of the photo's size (the low end x 4/scale),
                                                #         round 2 of the final size
    noise_prob: float = 1.0
    gaussian_prob: float = 0.5                  # the rest is Poisson noise
    noise_sigma: tuple = (1.0, 20.0)            # Gaussian, in 0-255 units
    poisson_scale: tuple = (0.05, 2.0)
    gray_noise_prob: float = 0.4
    jpeg_prob: float = 1.0
    jpeg_quality: tuple = (30.0, 95.0)


FIRST = Round()
SECOND = Round(blur_prob=0.8, blur_sigma=(0.2, 1.2), resize_probs=(0.3, 0.4, 0.3), resize_range=(0.5, 1.2),
               noise_prob=0.5, noise_sigma=(1.0, 15.0), poisson_scale=(0.05, 1.5))


@dataclass(frozen=True)
class RealWorld:
    """The chain for one scale. `degrade` works on batches of tensors, `degrade_image` on one PIL image."""
    scale: int = 4
    first: Round = FIRST
    second: Round = SECOND
    second_prob: float = 1.0           # share of inputs that get round 2
    final_jpeg: tuple = (30.0, 95.0)
    clean_prob: float = 0.0            # share of plain bicubic inputs (training: some; evaluation: none)
    name: str = field(default="real-world second-order (Real-ESRGAN style)", compare=False)

    def degrade(self, hr: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, 3, H/scale, W/scale), quantised to 8 bits like a decoded file."""
        if hr.ndim != 4 or hr.shape[1] != 3:
            raise ValueError(f"degrade takes (B, 3, H, W) images, got {tuple(hr.shape)}")
        b, _, h, w = hr.shape
        if h % self.scale or w % self.scale:
            raise ValueError(f"image sides {h}x{w} do not divide by the scale {self.scale}")
        seed = random.getrandbits(63) if seed is None else int(seed)
        cpu = torch.Generator().manual_seed(seed)
        dev = torch.Generator(device=hr.device).manual_seed(seed ^ 0x5DEECE66D)
        lr_size = (h // self.scale, w // self.scale)
        with torch.autocast(hr.device.type, enabled=False):
            x = hr.float()
            sigma_scale = self.scale / 4          # round 1's blur is in HR pixels: x2 gets half of x4's
            x = _round(x, self.first, cpu, dev, size_of=x.shape[-2:], sigma_scale=sigma_scale,
                       low_scale=min(1.0, 4 / self.scale))
            second = _rand(cpu, b) < self.second_prob
            if second.any():
                y = _round(x, self.second, cpu, dev, size_of=lr_size, sigma_scale=1.0, low_scale=1.0)
                if y.shape == x.shape:
                    x = torch.where(second.to(x.device)[:, None, None, None], y, x)
                else:   # round 2 resized: those without it are brought to the same size with the same kernel
                    x = torch.where(second.to(x.device)[:, None, None, None], y, _resize(x, y.shape[-2:], "bicubic"))
            x = _resize(x, lr_size, RESIZE_MODES[_choice(cpu, (1, 1, 1))])
            x = _jpeg(x, _uniform(cpu, b, self.final_jpeg))
            if self.clean_prob > 0:
                clean = _rand(cpu, b) < self.clean_prob
                bicubic = _resize(hr.float(), lr_size, "bicubic")
                x = torch.where(clean.to(x.device)[:, None, None, None], bicubic, x)
            x = x.clamp(0, 1).mul(255).round().div(255)
        return x.to(hr.dtype)

    def degrade_image(self, hr: Image.Image, seed: int) -> Image.Image:
        """One PIL RGB image (sides divisible by the scale) -> its degraded low-resolution version."""
        t = torch.from_numpy(np.asarray(hr.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
        lr = self.degrade(t, seed)[0].permute(1, 2, 0).numpy()
        return Image.fromarray((lr * 255).round().astype(np.uint8))

    @classmethod
    def from_dict(cls, d: dict) -> RealWorld:
        """The chain `to_dict` recorded (lists back to tuples; the descriptive keys dropped)."""
        def tup(v):
            return tuple(v) if isinstance(v, list) else v
        rounds = {k: Round(**{f: tup(v) for f, v in d[k].items()}) for k in ("first", "second")}
        return cls(scale=d["scale"], second_prob=d["second_prob"], final_jpeg=tup(d["final_jpeg"]),
                   clean_prob=d["clean_prob"], **rounds)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kernel_size"] = KERNEL_SIZE
        d["resize_modes"] = list(RESIZE_MODES)
        d["noise_units"] = "Gaussian sigma in 0-255 units; Poisson noise of an 8-bit image, times poisson_scale"
        d["round1_blur_sigma_in"] = f"high-resolution pixels x {self.scale / 4:g}"
        return d


def seed_for(name: str) -> int:
    """A stable seed from a file name (Python's hash() changes between runs)."""
    return zlib.crc32(name.encode("utf-8"))


# ---- the steps ------------------------------------------------------------------------------------------
def _rand(gen, n):
    return torch.rand(n, generator=gen)


def _uniform(gen, n, rng):
    lo, hi = rng
    return lo + (hi - lo) * _rand(gen, n)


def _choice(gen, probs) -> int:
    p = torch.tensor(probs, dtype=torch.float64)
    return int(torch.multinomial(p / p.sum(), 1, generator=gen))


def blur_kernels(gen, n: int, rnd: Round, sigma_scale: float, size: int = KERNEL_SIZE) -> torch.Tensor:
    """(n, size, size) kernels: per image a Gaussian or generalised Gaussian, isotropic or rotated anisotropic,
    exp(-0.5 (x' S^-1 x)^(beta/2)), normalised to sum 1."""
    lo, hi = (s * sigma_scale for s in rnd.blur_sigma)
    kind = torch.multinomial(torch.tensor(rnd.kernel_probs, dtype=torch.float64), n, replacement=True, generator=gen)
    s1 = lo + (hi - lo) * _rand(gen, n)
    s2 = lo + (hi - lo) * _rand(gen, n)
    theta = math.pi * _rand(gen, n)
    beta = rnd.beta[0] + (rnd.beta[1] - rnd.beta[0]) * _rand(gen, n)
    iso = (kind == 0) | (kind == 2)
    s2 = torch.where(iso, s1, s2)
    beta = torch.where(kind >= 2, beta, torch.full_like(beta, 2.0))
    c, s = torch.cos(theta), torch.sin(theta)
    # inverse covariance R diag(1/s1^2, 1/s2^2) R^T
    a = c * c / s1 ** 2 + s * s / s2 ** 2
    bxy = c * s * (1 / s1 ** 2 - 1 / s2 ** 2)
    d = s * s / s1 ** 2 + c * c / s2 ** 2
    r = torch.arange(size, dtype=torch.float32) - size // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    q = (a[:, None, None] * xx ** 2 + 2 * bxy[:, None, None] * xx * yy + d[:, None, None] * yy ** 2).clamp_min(0)
    k = torch.exp(-0.5 * q ** (beta[:, None, None] / 2))
    return k / k.sum(dim=(1, 2), keepdim=True)


def _resize(x: torch.Tensor, size, mode: str) -> torch.Tensor:
    size = (max(1, int(size[0])), max(1, int(size[1])))
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "area":
        if size[0] > x.shape[-2]:   # area is a down-scaling kernel
            mode = "bilinear"
        else:
            return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


def _noise(x: torch.Tensor, rnd: Round, cpu, dev) -> torch.Tensor:
    b = x.shape[0]
    on = (_rand(cpu, b) < rnd.noise_prob).to(x.device)
    gaussian = (_rand(cpu, b) < rnd.gaussian_prob).to(x.device)
    gray = (_rand(cpu, b) < rnd.gray_noise_prob).to(x.device)[:, None, None, None]
    sigma = (_uniform(cpu, b, rnd.noise_sigma) / 255).to(x.device)[:, None, None, None]
    pscale = _uniform(cpu, b, rnd.poisson_scale).to(x.device)[:, None, None, None]
    shape1 = (b, 1) + tuple(x.shape[-2:])
    g = torch.where(gray, torch.randn(shape1, generator=dev, device=x.device).expand_as(x),
                    torch.randn(x.shape, generator=dev, device=x.device)) * sigma
    xc = x.clamp(0, 1)
    grey = (xc * torch.tensor([0.299, 0.587, 0.114], device=x.device)[None, :, None, None]).sum(1, keepdim=True)
    if bool(gaussian.all()):
        n = g
    else:
        vals = 255.0   # an 8-bit image's photon count per level (Real-ESRGAN: 2^ceil(log2(distinct values)))
        p_color = torch.poisson(xc * vals, generator=dev) / vals - xc
        p_gray = (torch.poisson(grey * vals, generator=dev) / vals - grey).expand_as(x)
        p = torch.where(gray, p_gray, p_color) * pscale
        n = torch.where(gaussian[:, None, None, None], g, p)
    return x + n * on[:, None, None, None]


def _jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    return jpeg_codec_differentiable(x.clamp(0, 1), quality.to(x.device))


def _round(x: torch.Tensor, rnd: Round, cpu, dev, size_of, sigma_scale: float, low_scale: float) -> torch.Tensor:
    """One round; `size_of` is the size the resize factor is relative to, `low_scale` scales its low end."""
    b = x.shape[0]
    blur = (_rand(cpu, b) < rnd.blur_prob)
    k = blur_kernels(cpu, b, rnd, sigma_scale)
    delta = torch.zeros_like(k)
    delta[:, KERNEL_SIZE // 2, KERNEL_SIZE // 2] = 1
    k = torch.where(blur[:, None, None], k, delta)
    pad = KERNEL_SIZE // 2
    if min(x.shape[-2:]) > pad:
        x = filter2d(x, k.to(x.device), border_type="reflect")
    # one resize for the batch (a batch shares its size)
    how = _choice(cpu, rnd.resize_probs)
    lo, hi = rnd.resize_range
    lo = min(1.0, lo * low_scale)
    u = float(_rand(cpu, 1))
    factor = 1 + u * (hi - 1) if how == 0 else (lo + u * (1 - lo) if how == 1 else 1.0)
    size = (round(size_of[0] * factor), round(size_of[1] * factor))
    x = _resize(x, size, RESIZE_MODES[_choice(cpu, (1, 1, 1))])
    x = _noise(x, rnd, cpu, dev)
    jpeg = (_rand(cpu, b) < rnd.jpeg_prob).to(x.device)[:, None, None, None]
    q = _uniform(cpu, b, rnd.jpeg_quality)
    x = torch.where(jpeg, _jpeg(x, q), x.clamp(0, 1))
    return x
