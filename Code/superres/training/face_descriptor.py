"""dlib's ResNet face descriptor in torch: a frozen, face-aware feature network for losses where no ImageNet
weights can be downloaded.

The weights are read from dlib's own `dlib_face_recognition_resnet_model_v1.dat` (in the face_recognition_models
wheel: dlib's models, CC0), so nothing is downloaded and nothing is copied into the repo. The network is the
one of dlib's `dnn_face_recognition_ex.cpp` (a ResNet-34 with fewer filters, 150x150 RGB chips in, 128-d
descriptors out); `test_face_descriptor.py` checks that it reproduces dlib's descriptors.

The .dat file is dlib's serialisation, which writes a network from its input layer to its loss layer; each
layer's tensors are 4-byte little-endian floats, its integers dlib's variable-length ones. Only the layers
this network has are read; anything else is an error, not a guess.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"
CHIP_SIZE = 150                              # dlib's input_rgb_image_sized<150>
CHIP_PADDING = 0.25                          # dlib.get_face_chip's default, as compute_face_descriptor uses
MEAN_RGB = (122.782, 117.001, 104.298)       # dlib subtracts these and divides by 256


def dlib_models_folder() -> Path:
    """The `models/` folder of the face_recognition_models wheel, found without importing the package (its
    __init__ needs pkg_resources, which current setuptools no longer has)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dlib's face models need face_recognition_models (pip install -e '.[eval]')")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class _Reader:
    """dlib's serialisation: integers are a length byte (low nibble; 0x80 = negative) and that many
    little-endian bytes; a tensor is version 2, four dimensions and the float32 values."""

    def __init__(self, data: bytes):
        self.b, self.pos = data, 0

    def int(self) -> int:
        c = self.b[self.pos]
        n = c & 0x0F
        v = int.from_bytes(self.b[self.pos + 1:self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -v if c & 0x80 else v

    def ints(self, n: int) -> list[int]:
        return [self.int() for _ in range(n)]

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise ValueError(f"dlib tensor version {version} at byte {self.pos} (expected 2)")
        dims = self.ints(4)
        n = int(np.prod(dims))
        a = np.frombuffer(self.b, "<f4", n, self.pos).copy()
        self.pos += 4 * n
        return a

    def find(self, name: str) -> None:
        """Move past the next layer name `name` (a length-prefixed string)."""
        key = bytes([0x01, len(name)]) + name.encode()
        i = self.b.find(key, self.pos)
        if i < 0:
            raise ValueError(f"no layer {name!r} after byte {self.pos}")
        self.pos = i + len(key)


def _conv(r: _Reader) -> nn.Conv2d:
    r.find("con_4")
    params = r.tensor()
    n_out, kh, kw, sy, sx, py, px = r.ints(7)
    n_in = (params.size - n_out) // (n_out * kh * kw)
    if n_in * n_out * kh * kw + n_out != params.size:
        raise ValueError(f"con_4 with {params.size} values does not fit {n_out} filters of {kh}x{kw}")
    conv = nn.Conv2d(n_in, n_out, (kh, kw), (sy, sx), (py, px))
    w = n_in * n_out * kh * kw
    conv.weight.data = torch.from_numpy(params[:w].reshape(n_out, n_in, kh, kw))
    conv.bias.data = torch.from_numpy(params[w:])
    return conv


class _Affine(nn.Module):
    """dlib's affine_ layer: a batch norm folded into a per-channel scale and shift."""

    def __init__(self, r: _Reader, channels: int):
        super().__init__()
        r.find("affine_")
        p = torch.from_numpy(r.tensor())
        if p.numel() != 2 * channels:
            raise ValueError(f"affine_ with {p.numel()} values after a conv of {channels} filters")
        self.register_buffer("gamma", p[:channels].view(1, -1, 1, 1))
        self.register_buffer("beta", p[channels:].view(1, -1, 1, 1))

    def forward(self, x):
        return x * self.gamma + self.beta


def _pool(r: _Reader, name: str) -> tuple[int, int, int, int]:
    """kernel, stride, padding (square) of a pooling layer; kernel 0 means the whole image."""
    r.find(name)
    kh, kw, sy, sx, py, px = r.ints(6)
    if kh != kw or sy != sx or py != px:
        raise ValueError(f"{name}: {kh}x{kw}, stride {sy},{sx}, padding {py},{px} is not square")
    return kh, sy, py


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: where the two differ in channels or size, the smaller is extended with zeros."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))
    def grow(t):
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))
    return grow(a) + grow(b)


class _Block(nn.Module):
    """relu(affine(conv(relu(affine(conv(x))))) + shortcut): dlib's `ares`, or `ares_down` (first conv
    strided, the shortcut a 2x2 average pool of the input) when the file has an avg_pool before the add."""

    def __init__(self, r: _Reader, channels_in: int):
        super().__init__()
        self.conv1 = _conv(r)
        self.bn1 = _Affine(r, self.conv1.out_channels)
        self.conv2 = _conv(r)
        self.bn2 = _Affine(r, self.conv2.out_channels)
        self.down = self.conv1.stride[0] != 1
        if self.down:
            self.pool = _pool(r, "avg_pool_2")
        r.find("add_prev_")
        if self.conv1.in_channels != channels_in:
            raise ValueError(f"block expects {self.conv1.in_channels} channels, gets {channels_in}")

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.down:
            k, s, p = self.pool
            x = F.avg_pool2d(x, k, s, p)
        return F.relu(_add(y, x))


class FaceDescriptor(nn.Module):
    """(N, 3, 150, 150) RGB in [0, 1], aligned as dlib.get_face_chip aligns (see `chip_transform`) ->
    (N, 128) descriptors; dlib counts two faces within 0.6 of each other as one person. Frozen (no gradient to
    its weights), but differentiable with respect to its input, so it can serve in a loss."""

    def __init__(self, path: str | Path | None = None):
        super().__init__()
        path = Path(path) if path else dlib_models_folder() / DESCRIPTOR_FILE
        r = _Reader(path.read_bytes())
        r.find("input_rgb_image_sized")
        self.stem = _conv(r)
        self.stem_bn = _Affine(r, self.stem.out_channels)
        self.stem_pool = _pool(r, "max_pool_2")
        blocks, channels = [], self.stem.out_channels
        while True:
            start = r.pos
            try:
                blocks.append(_Block(r, channels))
            except ValueError:
                r.pos = start
                break
            channels = blocks[-1].conv2.out_channels
        self.blocks = nn.Sequential(*blocks)
        if _pool(r, "avg_pool_2")[0] != 0:
            raise ValueError("expected avg_pool_everything after the residual blocks")
        r.find("fc_2")
        n_out, n_in = r.ints(2)
        w = r.tensor()
        if w.size != n_in * n_out or n_in != channels:
            raise ValueError(f"fc_2 of {w.size} values for {n_in} -> {n_out} after {channels} channels")
        self.register_buffer("fc", torch.from_numpy(w.reshape(n_in, n_out)))   # dlib: output = input . W
        self.register_buffer("mean", torch.tensor(MEAN_RGB).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = (chips * 255 - self.mean) / 256
        x = F.relu(self.stem_bn(self.stem(x)))
        k, s, p = self.stem_pool
        x = F.max_pool2d(x, k, s, p)
        x = self.blocks(x).mean(dim=(2, 3))
        return x @ self.fc


def chip_grid(details, height: int, width: int) -> torch.Tensor:
    """The (CHIP, CHIP, 2) sampling grid (for `F.grid_sample(..., align_corners=True)`) that cuts dlib's aligned
    chip out of a `height` x `width` image: `details` is a `dlib.chip_details` (from
    `dlib.get_face_chip_details`), whose rotated rectangle's corners go to the chip's corners, as dlib's
    extract_image_chip maps them (it also low-passes a chip it shrinks by more than 2; faces in training crops
    are not that large)."""
    r, a, n = details.rect, details.angle, details.rows
    cx, cy = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2
    c, s = np.cos(a), np.sin(a)
    def rotate(x, y):   # about the centre by the chip's angle
        return cx + c * (x - cx) - s * (y - cy), cy + s * (x - cx) + c * (y - cy)
    tl, tr, bl = rotate(r.left(), r.top()), rotate(r.right(), r.top()), rotate(r.left(), r.bottom())
    t = np.arange(n) / (n - 1)
    x = tl[0] + t[None, :] * (tr[0] - tl[0]) + t[:, None] * (bl[0] - tl[0])
    y = tl[1] + t[None, :] * (tr[1] - tl[1]) + t[:, None] * (bl[1] - tl[1])
    grid = np.stack([2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1], -1)
    return torch.from_numpy(grid.astype(np.float32))
