"""The networks: the generator (one per scale) and the critic.

The generator is fastai's `DynamicUnet` on a ResNet encoder, as in fastai's superres-gan lesson
(`blur`, `self_attention`, weight norm), but all of it runs at the *low-resolution* input's size:
a trunk of ResBlocks at that size adds the fine detail, and an ICNR-initialised PixelShuffle head makes
the x4 (or x2) output. The lesson upsampled with bicubic first and ran the U-Net at the output size,
which costs ~16x more at x4. The head is the fastai up-sampler step: a conv to 3*s*s channels and a PixelShuffle.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from fastai.layers import ResBlock, icnr_init
from fastai.vision.all import (
    ConvLayer,
    DynamicUnet,
    NormType,
    create_body,
    imagenet_stats,
    resnet18,
    resnet34,
    xresnet18,
    xresnet34,
)
from fastai.vision.gan import gan_critic
from torch import nn

from superres.training.metrics import period_highpass, phase_offsets
from superres.training.options import option

# The U-Net needs sides that divide by the encoder's total stride; callers pad (see `pad_to_multiple`).
SIZE_MULTIPLE = 32


@dataclass
class UnetConfig:
    """Everything needed to rebuild a generator; stored in checkpoints and model cards."""
    # xresnet18 | xresnet34 (fastai, any width) | resnet18 | resnet34 (torchvision)
    arch: str = option("xresnet18", help="encoder: xresnet18, xresnet34, resnet18, resnet34")
    widen: float = option(0.25, help="xresnet width multiplier")                  # 1.0 = the standard network
    nf: int = option(48, help="channels of the low-resolution features")          # U-Net output, trunk, head input
    trunk_blocks: int = option(4, help="ResBlocks after the U-Net")               # at full low resolution, 2 convs each
    self_attention: bool = True
    blur: bool = True
    last_cross: bool = False     # fastai's full-resolution ResBlock on [U-Net output, input]; the trunk replaces it
    scale: int = 4               # x4 (or x2): the only work at the output size is the PixelShuffle head
    skip: str = option("bicubic", choices=["bicubic", "lanczos4"],
                       help="the fixed enlargement the network's output is added to (its global residual)")

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


def cubic(d: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel (PyTorch's bicubic, a = -0.75); zero from distance 2."""
    d = abs(d)
    if d <= 1:
        return ((a + 2) * d - (a + 3)) * d * d + 1
    return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a if d < 2 else 0.0


def lanczos4(d: float) -> float:
    """The Lanczos kernel of 4 lobes: sinc(d) sinc(d / 4), zero from distance 4."""
    if abs(d) >= 4:
        return 0.0
    x = math.pi * d
    return 1.0 if x == 0 else 4 * math.sin(x) * math.sin(x / 4) / (x * x)


# name -> (kernel, radius in input pixels)
SKIP_KERNELS = {"bicubic": (cubic, 2), "lanczos4": (lanczos4, 4)}


class UpscalePhases(nn.Module):
    """A fixed x`scale` enlargement before its PixelShuffle: (N,3,H,W) -> (N,3*s*s,H,W), one channel per output
    phase, so that PixelShuffle(s) of it is the enlarged image (borders replicated, as PyTorch does). With
    `kernel="bicubic"` that equals F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False).

    Why a conv: ONNX Runtime's cubic Resize was most of the x4 generator's CPU time; this fixed grouped conv
    does the same arithmetic in a few milliseconds. Its kernel is a constant, not a parameter.
    Why Lanczos-4 (`--skip lanczos4`): bicubic leaks the photo's strong low frequencies into images at multiples
    of 1/scale cycles/pixel, which the lattice measure reads as a grid; Lanczos-4's flatter pass and stop bands
    leak less. Each phase's taps are normalised to sum to 1, so flat areas stay flat. The shipped networks use
    bicubic: a Lanczos-4 fine-tune gained too little to ship (docs/decisions.md)."""

    def __init__(self, scale: int, kernel: str = "bicubic"):
        super().__init__()
        self.scale = scale
        fn, r = SKIP_KERNELS[kernel]
        taps = torch.zeros(scale, 2 * r + 1, dtype=torch.float64)   # per phase p: weights on input offsets -r..r
        for p in range(scale):
            src = (p + 0.5) / scale - 0.5     # source position of phase p, relative to its input pixel
            taps[p] = torch.tensor([fn(o - src) for o in range(-r, r + 1)], dtype=torch.float64)
            taps[p] /= taps[p].sum()
        kernel2d = torch.einsum("yi,xj->yxij", taps, taps).reshape(scale * scale, 1, 2 * r + 1, 2 * r + 1)
        self.pad = r
        self.register_buffer("kernel", kernel2d.float().repeat(3, 1, 1, 1), persistent=False)

    def forward(self, x):
        r = self.pad
        return F.conv2d(F.pad(x, (r, r, r, r), mode="replicate"), self.kernel.to(x.dtype), groups=3)


class Generator(nn.Module):
    """x (N,3,H,W) in [0,1] -> (N,3,sH,sW): a fixed enlargement plus a learned residual, all work at size H x W.

        context  = DynamicUnet(x)                 fastai U-Net on a ResNet encoder: large receptive field, cheap
        features = trunk(stem(x) + context)       ResBlocks at the full low resolution: the fine detail
        output   = skip(x) + head(features)       one conv to 3*s*s channels + PixelShuffle (ICNR init)

    skip(x) is the bicubic (or Lanczos-4, `cfg.skip`) enlargement of x, added before the shuffle as
    `UpscalePhases`: the same numbers, cheaper.

    The residual form lets a freshly initialised network start near bicubic quality instead of at noise.
    H and W must divide by SIZE_MULTIPLE (the U-Net's total stride).
    """

    def __init__(self, cfg: UnetConfig | None = None, pretrained: bool = False):
        super().__init__()
        self.cfg = cfg = UnetConfig() if cfg is None else cfg
        mean, std = imagenet_stats
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.unet = DynamicUnet(make_encoder(cfg, pretrained), n_out=cfg.nf, img_size=(64, 64),
                                blur=cfg.blur, self_attention=cfg.self_attention, last_cross=cfg.last_cross,
                                norm_type=NormType.Weight)
        self.stem = ConvLayer(3, cfg.nf, ks=3, act_cls=None, norm_type=None)
        self.trunk = nn.Sequential(*[ResBlock(1, cfg.nf, cfg.nf, norm_type=NormType.Weight)
                                     for _ in range(cfg.trunk_blocks)])
        self.head = nn.Sequential(ConvLayer(cfg.nf, 3 * cfg.scale ** 2, ks=3, act_cls=None, norm_type=None),
                                  nn.PixelShuffle(cfg.scale))
        self.skip = UpscalePhases(cfg.scale, cfg.skip)
        # ICNR: every output pixel of a PixelShuffle cell starts with the same weights, so no grid at the start
        conv = self.head[0][0]
        conv.weight.data.copy_(icnr_init(torch.empty_like(conv.weight), scale=cfg.scale) * 0.1)
        nn.init.zeros_(conv.bias)

    def set_skip(self, kind: str) -> None:
        """Swap the fixed enlargement (it has no weights), e.g. to fine-tune a bicubic-skip network with Lanczos-4."""
        self.cfg = UnetConfig(**{**self.cfg.to_dict(), "skip": kind})
        self.skip = UpscalePhases(self.cfg.scale, kind).to(self.mean.device)

    def forward(self, x):
        feats = self.trunk(self.stem(x) + self.unet((x - self.mean) / self.std))
        conv, shuffle = self.head
        # The head and the residual add stay in fp32 under bf16 autocast: bf16 steps are about one grey level
        # near white, too coarse for the loss to see a sub-grey 4-px sub-pixel pattern, which then grew in every
        # bf16 fine-tune (docs/decisions.md).
        with torch.autocast(x.device.type, enabled=False):
            return shuffle(conv(feats.float()) + self.skip(x.float()))


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


class HighPass(nn.Module):
    """x - blur(x), amplified: the detail a super-resolution network adds or misses.

    Why: on clean portraits a x2 output and the real photo differ by one or two grey levels. Fed raw images,
    fastai's critic stays at chance, even between bicubic and real; fed this residual it tells them apart
    within a few dozen steps."""

    def __init__(self, gain: float = 8.0):
        super().__init__()
        self.gain = gain

    def forward(self, x):
        blur = F.interpolate(F.avg_pool2d(x, 2), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return (x - blur) * self.gain


class ImageAndHighPass(nn.Module):
    """The image (scaled to [-1, 1]) stacked with its amplified high-pass: 6 channels.

    Why: a critic that sees only the high-pass cannot tell a bright halo beside a dark edge, or a dotted
    texture on flat skin, from a real edge or real skin pores: each has the same high-pass energy; this one also
    sees the image."""

    def __init__(self, gain: float = 8.0):
        super().__init__()
        self.high_pass = HighPass(gain)

    def forward(self, x):
        return torch.cat([x * 2 - 1, self.high_pass(x)], dim=1)


class ImageHighPassAndGrid(nn.Module):
    """`ImageAndHighPass` plus the image's local period-4 pattern, amplified: 9 channels. That pattern is
    `phase_offsets` of the image's `period_highpass`, the part of it that repeats with the PixelShuffle's period
    over a Gaussian window of `sigma` output pixels.

    Why: the GAN network's 4-px dots are locked to the output's pixel grid, whereas a photo's fine detail follows
    its content; over an eye or hair both have about the same local 4-px amplitude. So a loss on that amplitude
    hardly sees them (GridLoss), and neither does a critic that has to find the grid through its own strides."""

    def __init__(self, gain: float = 8.0, grid_gain: float = 32.0, period: int = 4, sigma: float = 3.0):
        super().__init__()
        self.image_and_high_pass = ImageAndHighPass(gain)
        self.grid_gain, self.period, self.sigma = grid_gain, period, sigma

    def forward(self, x):
        grid = phase_offsets(period_highpass(x, self.period), self.period, self.sigma) * self.grid_gain
        return torch.cat([self.image_and_high_pass(x), grid], dim=1)


CRITIC_INPUTS = {"highpass": (HighPass, 3), "image+highpass": (ImageAndHighPass, 6),
                 "image+highpass+grid": (ImageHighPassAndGrid, 9)}


def make_critic(nf: int = 32, n_blocks: int = 3, sees: str = "highpass") -> nn.Module:
    """fastai's GAN critic (spectral norm, self-attention) on the image's high frequencies (`sees="highpass"`)
    or on the image and its high frequencies (`"image+highpass"`); patch logits."""
    view, channels = CRITIC_INPUTS[sees]
    return nn.Sequential(view(), gan_critic(n_channels=channels, nf=nf, n_blocks=n_blocks))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- a generator checkpoint: {"config": UnetConfig fields, "model": state dict} ----------------------
def save_network(model: Generator, path) -> None:
    torch.save({"config": model.cfg.to_dict(), "model": {k: v.contiguous() for k, v in model.state_dict().items()}},
               path)


def load_network(path) -> Generator:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = Generator(UnetConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model


def blend_outputs(faithful_out: torch.Tensor, gan_out: torch.Tensor, strength: float) -> torch.Tensor:
    """The output at `strength`: 0 = the faithful (pre-GAN) generator's, 1 = the GAN generator's, in between
    (1 - s) * faithful + s * gan, as `superres.runtime.inference.Enhancer` blends the ONNX outputs. Blending outputs,
    not weights (ESRGAN's network interpolation): the interpolated networks drew a grid neither end has."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return torch.lerp(faithful_out, gan_out, float(strength))
