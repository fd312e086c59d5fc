"""The three networks: the U-Net generator, the critic and the up-sampler.

The generator is fastai's `DynamicUnet` on a ResNet encoder, as in fastai's superres-gan lesson
(`blur`, `self_attention`, weight norm), but it runs on the *low-resolution* input and doubles the
size at the end with an ICNR-initialised PixelShuffle head. The lesson upsampled with bicubic first and
ran the U-Net at the output size, which costs ~16x more on a CPU.

The up-sampler is the same family (a narrower encoder), applied to the generator's output:
    x2 = generator(x)          x4 = upsampler(generator(x))
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn.functional as F
from fastai.vision.all import (DynamicUnet, NormType, PixelShuffle_ICNR, ConvLayer, create_body,
                               imagenet_stats, resnet18, resnet34, xresnet18, xresnet34)
from fastai.vision.gan import gan_critic
from torch import nn

# The U-Net needs sides that divide by the encoder's total stride; callers pad (see `pad_to_multiple`).
SIZE_MULTIPLE = 32


@dataclass
class UnetConfig:
    """Everything needed to rebuild a network; stored in checkpoints and model cards."""
    arch: str = "xresnet18"      # xresnet18 | xresnet34 (fastai, any width) | resnet18 | resnet34 (torchvision)
    widen: float = 0.25          # xresnet width multiplier (1.0 = the standard network)
    head_nf: int = 16            # channels entering the PixelShuffle head
    self_attention: bool = True
    blur: bool = True
    last_cross: bool = False     # fastai's full-resolution ResBlock: ~3x slower on a CPU; the bicubic residual replaces it
    scale: int = 2               # every network here doubles; x4 is two of them in a chain

    def to_dict(self):
        return asdict(self)


def make_encoder(cfg: UnetConfig, pretrained: bool = False) -> nn.Module:
    """A ResNet body cut before its pooling head. `pretrained` downloads ImageNet weights (needs internet)."""
    if cfg.arch.startswith("xresnet"):
        if pretrained and cfg.widen != 1.0:
            raise ValueError("ImageNet weights exist only for widen=1.0 xresnets")
        arch = {"xresnet18": xresnet18, "xresnet34": xresnet34}[cfg.arch]
        return create_body(_download(arch, pretrained=pretrained, widen=cfg.widen), pretrained=pretrained)
    if cfg.arch in ("resnet18", "resnet34"):
        arch = {"resnet18": resnet18, "resnet34": resnet34}[cfg.arch]
        weights = "DEFAULT" if pretrained else None
        return create_body(_download(arch, weights=weights), pretrained=pretrained)
    raise ValueError(f"unknown encoder arch {cfg.arch!r}")


def _download(arch, **kwargs):
    """Build `arch`, turning a failed weight download into a clear, immediate error."""
    try:
        return arch(**kwargs)
    except OSError as e:  # URLError is an OSError
        raise RuntimeError(
            f"Could not download pretrained weights for {arch.__name__} ({e}). This needs internet access "
            "(e.g. Colab or Kaggle); on an offline machine train with pretrained=False.") from e


class Generator(nn.Module):
    """x (N,3,H,W) in [0,1] -> (N,3,2H,2W): bicubic upsampling plus a learned residual.

    The residual form lets a freshly initialised network start at bicubic quality instead of at noise.
    H and W must divide by SIZE_MULTIPLE.
    """

    def __init__(self, cfg: UnetConfig = UnetConfig(), pretrained: bool = False):
        super().__init__()
        self.cfg = cfg
        mean, std = imagenet_stats
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.unet = DynamicUnet(make_encoder(cfg, pretrained), n_out=cfg.head_nf, img_size=(64, 64),
                                blur=cfg.blur, self_attention=cfg.self_attention, last_cross=cfg.last_cross,
                                norm_type=NormType.Weight)
        self.head = nn.Sequential(
            PixelShuffle_ICNR(cfg.head_nf, cfg.head_nf, scale=cfg.scale, blur=cfg.blur, norm_type=NormType.Weight),
            ConvLayer(cfg.head_nf, 3, ks=3, act_cls=None, norm_type=None))
        nn.init.zeros_(self.head[-1][0].weight)  # start exactly at bicubic
        nn.init.zeros_(self.head[-1][0].bias)

    def forward(self, x):
        base = F.interpolate(x, scale_factor=self.cfg.scale, mode="bicubic", align_corners=False)
        return base + self.head(self.unet((x - self.mean) / self.std))


def pad_to_multiple(x: torch.Tensor, multiple: int = SIZE_MULTIPLE):
    """Reflect-pad the bottom/right so both sides divide by `multiple`; returns (padded, (h, w))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


@torch.no_grad()
def upscale(model: Generator, x: torch.Tensor) -> torch.Tensor:
    """Run a network on any size: pad to the multiple it needs, crop the output back."""
    xp, (h, w) = pad_to_multiple(x)
    s = model.cfg.scale
    return model(xp)[..., : h * s, : w * s]


class Chain(nn.Module):
    """x4 = upsampler(generator(x)); used to train the up-sampler behind a frozen generator."""

    def __init__(self, generator: Generator, upsampler: Generator):
        super().__init__()
        self.generator, self.upsampler = generator, upsampler
        for p in self.generator.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        self.generator.eval()
        with torch.no_grad():
            y2 = self.generator(x).clamp(0, 1)
        return self.upsampler(y2)


class HighPass(nn.Module):
    """x - blur(x), amplified: the detail a x2 network adds or misses.

    Why: on clean portraits a x2 output and the real photo differ by one or two grey levels. Fed raw images,
    fastai's critic stayed at chance (BCE = ln 2 after 228 steps, even between bicubic and real); fed this
    residual it told bicubic from real within 80 steps (loss 0.23)."""

    def __init__(self, gain: float = 8.0):
        super().__init__()
        self.gain = gain

    def forward(self, x):
        blur = F.interpolate(F.avg_pool2d(x, 2), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return (x - blur) * self.gain


def make_critic(nf: int = 32, n_blocks: int = 3) -> nn.Module:
    """fastai's GAN critic (spectral norm, self-attention) on the image's high frequencies; patch logits."""
    return nn.Sequential(HighPass(), gan_critic(n_channels=3, nf=nf, n_blocks=n_blocks))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def interpolate_weights(faithful: dict, gan: dict, strength: float) -> dict:
    """ESRGAN's network interpolation: 0 = faithful (pre-GAN) weights, 1 = GAN weights."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    out = {}
    for k, a in faithful.items():
        b = gan[k]
        out[k] = a + strength * (b - a) if a.is_floating_point() else a
    return out
