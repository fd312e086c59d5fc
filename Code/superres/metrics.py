"""Image quality scores, the published SR convention: PSNR and SSIM on the Y channel of YCbCr
(ITU-R BT.601, as MATLAB's rgb2ycbcr), with `border` pixels shaved on each side.

Torch functions on (N,3,H,W) tensors in [0,1]; used as fastai metrics during training and by `evaluate`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) in [0,1] -> (N,1,H,W) luma in [16/255, 235/255]."""
    w = x.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True) / 255.0 + 16.0 / 255.0


def _shave(x, border):
    return x[..., border:-border, border:-border] if border else x


def psnr_y(pred: torch.Tensor, target: torch.Tensor, border: int = 0) -> torch.Tensor:
    """Mean PSNR (dB) on Y over the batch; `pred` is clamped and rounded to 8 bits like a saved image."""
    pred = (pred.float().clamp(0, 1) * 255).round() / 255
    a, b = _shave(rgb_to_y(pred), border), _shave(rgb_to_y(target.float()), border)
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return (10 * torch.log10(1.0 / mse)).mean()


def _gaussian_1d(size=11, sigma=1.5, device=None):
    g = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    g = torch.exp(-(g ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _gaussian_window(size=11, sigma=1.5, device=None):
    g = _gaussian_1d(size, sigma, device)
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of the last two dims by the 1-D kernel `g`, as shifted multiply-adds
    (on CPU ~4x faster than a grouped 1x11 + 11x1 convolution, and the same numbers)."""
    k = g.numel()
    w = x.shape[-1] - k + 1
    h = x[..., 0:w] * g[0]
    for i in range(1, k):
        h.add_(x[..., i:i + w], alpha=float(g[i]))
    n = x.shape[-2] - k + 1
    v = h[..., 0:n, :] * g[0]
    for i in range(1, k):
        v.add_(h[..., i:i + n, :], alpha=float(g[i]))
    return v


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM (Wang et al. 2004, 11x11 Gaussian, sigma 1.5, 'valid' filtering as in the reference MATLAB code)
    of single-channel images in [0,1], per image.

    The Gaussian window is separable: the five local moments are filtered together, one row pass and one
    column pass (the same numbers as the 11x11 window to ~1e-6)."""
    g = _gaussian_1d(device=a.device).to(a.dtype)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    x = _filter_valid(torch.cat([a, b, a * a, b * b, a * b], 1), g)
    mu_a, mu_b, e_aa, e_bb, e_ab = x.split(1, dim=1)
    saa = e_aa - mu_a ** 2
    sbb = e_bb - mu_b ** 2
    sab = e_ab - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    return m.mean(dim=(1, 2, 3))


def ssim_y(pred: torch.Tensor, target: torch.Tensor, border: int = 0) -> torch.Tensor:
    pred = (pred.float().clamp(0, 1) * 255).round() / 255
    return ssim(_shave(rgb_to_y(pred), border), _shave(rgb_to_y(target.float()), border)).mean()


def high_freq_ratio(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Energy of the Laplacian of `pred` over that of `target` (Y channel): <1 over-smoothed, >1 invented texture."""
    k = pred.new_tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float32).view(1, 1, 3, 3)
    lp = F.conv2d(rgb_to_y(pred.float().clamp(0, 1)), k)
    lt = F.conv2d(rgb_to_y(target.float()), k)
    return (lp.pow(2).mean() / lt.pow(2).mean().clamp_min(1e-12)).sqrt()
