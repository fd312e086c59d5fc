"""Training data: (low-quality input, clean target) pairs made on the fly from any folder of photos.

Two "crappify" steps: `Degradation` (first order, on PIL images in the loading workers: blur -> downscale with a
random kernel -> noise -> JPEG; fastai's lesson used JPEG quality 10-70 only) and the real-world second-order chain
of superres.training.degradations, which runs on whole batches on the training device (`DegradeBatch`): the workers then
only crop, and the batch arrives as (photo, photo) until the transform turns the inputs into degraded ones.
`sr_dataloaders` wraps it in fastai `DataLoaders`. We use fastai's mid-level `TfmdLists` rather than a
`DataBlock` because input and target must come from the *same* random crop: one `Transform` makes both.
Validation pairs are seeded by their index, so they are identical every epoch.
"""
from __future__ import annotations

import io
import random
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from fastai.data.core import TfmdLists, Transform
from fastai.data.transforms import ItemTransform
from PIL import Image, ImageFilter

from superres.runtime.imaging import image_files
from superres.training.degradations import RealWorld

RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "area": Image.BOX, "lanczos": Image.LANCZOS}


@dataclass
class Degradation:
    """Random degradation of a clean high-resolution image into a low-resolution input."""
    scale: int = 2
    clean_prob: float = 0.25             # share of plain bicubic downscales (the benchmark convention)
    kernels: tuple = ("bicubic", "bilinear", "area")
    blur_prob: float = 0.5
    blur_sigma: tuple = (0.2, 1.5)       # in high-resolution pixels, applied before downscaling
    noise_prob: float = 0.5
    noise_sigma: tuple = (1.0, 8.0)      # in 0-255 units
    jpeg_prob: float = 0.8
    jpeg_quality: tuple = (30, 95)

    def __call__(self, hr: Image.Image, rng: random.Random = random) -> Image.Image:
        size = (hr.width // self.scale, hr.height // self.scale)
        if rng.random() < self.clean_prob:
            return hr.resize(size, Image.BICUBIC)
        img = hr
        if rng.random() < self.blur_prob:
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(*self.blur_sigma)))
        img = img.resize(size, RESAMPLE[rng.choice(self.kernels)])
        if rng.random() < self.noise_prob:
            a = np.asarray(img, dtype=np.float32)
            nrng = np.random.default_rng(rng.getrandbits(32))
            sigma = rng.uniform(*self.noise_sigma)
            noise = nrng.normal(0, sigma, a.shape[:2] + (1,)) if rng.random() < 0.4 else nrng.normal(0, sigma, a.shape)
            img = Image.fromarray(np.clip(a + noise, 0, 255).round().astype(np.uint8))
        if rng.random() < self.jpeg_prob:
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=rng.randint(*self.jpeg_quality))
            img = Image.open(buf).convert("RGB")
        return img

    def to_dict(self):
        return asdict(self)


def degradation_from_record(d: dict) -> Degradation | RealWorld:
    """The degradation a training record (or model card) names: the real-world chain or the first-order one."""
    if "first" in d:
        return RealWorld.from_dict(d)
    return Degradation(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@lru_cache(maxsize=4096)
def load_photo(path: str, max_side: int) -> Image.Image:
    """Decode once (cached): RGB, shrunk so the longer side is at most `max_side`."""
    img = Image.open(path)
    img.draft("RGB", (max_side, max_side))  # fast JPEG decode at reduced size
    img = img.convert("RGB")
    if max(img.size) > max_side:
        r = max_side / max(img.size)
        img = img.resize((round(img.width * r), round(img.height * r)), Image.LANCZOS)
    img.load()
    return img


def random_crop(img: Image.Image, size: int, rng: random.Random, min_zoom: float = 0.6) -> Image.Image:
    """A `size` square crop; zoomed out by up to 1/min_zoom (so faces appear at several scales), maybe flipped."""
    zoom = rng.uniform(min_zoom, 1.0)
    side = min(round(size / zoom), img.width, img.height)
    x, y = rng.randint(0, img.width - side), rng.randint(0, img.height - side)
    crop = img.crop((x, y, x + side, y + side))
    if side != size:
        crop = crop.resize((size, size), Image.LANCZOS)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return crop


def to_tensor(img: Image.Image):
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def to_uint8_tensor(img: Image.Image):
    """(3,H,W) uint8: a quarter of float32's bytes through the data-loading workers' queues."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class ToUnitFloat(Transform):
    """uint8 batch -> float in [0,1], after the batch reached its device (fastai's `after_batch`)."""
    order = 0

    def encodes(self, x: torch.Tensor):
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def make_pair(path, hr_size: int, degradation: Degradation | RealWorld, rng: random.Random, max_side: int = 768):
    """One (lr, hr) pair of PIL images from a photo."""
    if min(load_photo(str(path), max_side).size) < hr_size:
        raise ValueError(f"{path} is smaller than the crop size {hr_size}")
    hr = random_crop(load_photo(str(path), max_side), hr_size, rng)
    if isinstance(degradation, RealWorld):
        return degradation.degrade_image(hr, rng.getrandbits(63)), hr
    return degradation(hr, rng), hr


@dataclass(frozen=True)
class PairItem:
    """One training example: a photo and a seed (None = fresh randomness each time, for training)."""
    path: Path
    seed: int | None = None


class MakePair(Transform):
    """PairItem -> (lr, hr) uint8 tensors; `ToUnitFloat` makes them floats in [0,1] per batch, on the device.
    (Not a tuple item: fastai would map the transform over a tuple.)
    With the real-world chain, a training item is (hr, hr) and `DegradeBatch` makes the input per batch; a
    validation item (seeded) is degraded here, one image at a time, by the same chain with its seed."""

    def __init__(self, hr_size: int, degradation: Degradation | RealWorld, max_side: int = 768):
        super().__init__()
        self.hr_size, self.degradation, self.max_side = hr_size, degradation, max_side

    def encodes(self, item):
        rng = random.Random(item.seed) if item.seed is not None else random
        if isinstance(self.degradation, RealWorld) and item.seed is None:
            hr = to_uint8_tensor(random_crop(load_photo(str(item.path), self.max_side), self.hr_size, rng))
            return hr, hr
        lr, hr = make_pair(item.path, self.hr_size, self.degradation, rng, self.max_side)
        return to_uint8_tensor(lr), to_uint8_tensor(hr)


class DegradeBatch(ItemTransform):
    """Training batches only (`split_idx = 0`): the inputs, still the photos, become their real-world
    degradations, on the batch's device (after `ToUnitFloat`). An ItemTransform: it gets the (x, y) tuple whole."""
    order, split_idx = 1, 0

    def __init__(self, chain: RealWorld):
        super().__init__()
        self.chain = chain

    def encodes(self, b):
        x, *rest = b
        return (self.chain.degrade(x), *rest)


def image_files_in(folders) -> list[Path]:
    """Images of one folder, or of several (a list, or one string with commas)."""
    if isinstance(folders, (str, Path)):
        folders = [f for f in str(folders).split(",") if f]
    return [p for folder in folders for p in image_files(folder)]


def big_enough(files, hr_size: int, max_side: int) -> list[Path]:
    """The photos whose short side (after the `max_side` shrink) holds an `hr_size` crop; says how many not."""
    def short_side(p):
        with Image.open(p) as im:
            w, h = im.size
        return min(w, h) * min(1.0, max_side / max(w, h))
    keep = [p for p in files if short_side(p) >= hr_size]
    if len(keep) < len(files):
        print(f"[superres] left out {len(files) - len(keep)} of {len(files)} photos smaller than {hr_size} px")
    return keep


def sr_dataloaders(train_folder, valid_folder=None, scale: int = 2, hr_size: int = 128, bs: int = 16,
                   repeats: int = 4, valid_pct: float = 0.1, valid_crops: int = 2,
                   degradation: Degradation | RealWorld | None = None,
                   max_side: int = 768, seed: int = 42, num_workers: int = 0, device=None):
    """fastai DataLoaders of (lr, hr) float tensors in [0,1]; lr is hr_size/scale square.

    `train_folder` may name several folders (see `image_files_in`). `repeats` crops per training photo make
    one epoch. Without `valid_folder`, `valid_pct` of the training photos are held out. With worker
    processes the photos are decoded once here, before the workers fork, so they share the decoded copies."""

    degradation = degradation or Degradation(scale=scale)
    if degradation.scale != scale:
        raise ValueError("degradation.scale must equal scale")
    if hr_size % scale:
        raise ValueError("hr_size must divide by scale")
    train = image_files_in(train_folder)
    if valid_folder is None:
        shuffled = train[:]
        random.Random(seed).shuffle(shuffled)
        n_valid = max(1, round(len(train) * valid_pct))
        valid, train = sorted(shuffled[:n_valid]), sorted(shuffled[n_valid:])
    else:
        valid = image_files_in(valid_folder)
    # photos too small for one crop can't be targets (upscaling them would teach blur): leave them out
    train, valid = (big_enough(files, hr_size, max_side) for files in (train, valid))
    if not train or not valid:
        raise ValueError(f"no training or validation photo has a short side of at least {hr_size} px")
    if num_workers:
        for p in train + valid:
            load_photo(str(p), max_side)
    items = [PairItem(p) for p in train for _ in range(repeats)]
    items += [PairItem(p, seed * 100003 + i) for i, p in enumerate(p for p in valid for _ in range(valid_crops))]
    splits = (list(range(len(train) * repeats)), list(range(len(train) * repeats, len(items))))

    tls = TfmdLists(items, [MakePair(hr_size, degradation, max_side)], splits=splits)
    device = torch.device(device or "cpu")
    after = [ToUnitFloat()] + ([DegradeBatch(degradation)] if isinstance(degradation, RealWorld) else [])
    dls = tls.dataloaders(bs=bs, shuffle=True, drop_last=True, num_workers=num_workers, after_batch=after,
                          device=device, pin_memory=device.type == "cuda")
    dls.n_inp = 1
    return dls


# ---- public datasets the original project used ----------------------------------------------------
DATASETS = {
    # FFHQ 128x128 thumbnails are ~2 GB; the full set is distributed via Google Drive (see NVlabs/ffhq-dataset).
    "ffhq-thumbnails": "https://github.com/NVlabs/ffhq-dataset#thumbnails128x128",
    # UCF Selfie data set (Kalayeh et al., 2015)
    "ucf-selfie": "https://www.crcv.ucf.edu/data/Selfie/Selfie-dataset.tar.gz",
}


def download_dataset(url: str, dest, timeout: float = 10.0) -> Path:
    """Download and unpack an image archive (zip or tar) into `dest`; fails fast without internet."""
    import tarfile
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / Path(url.split("?")[0]).name
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(archive, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except OSError as e:
        archive.unlink(missing_ok=True)
        raise RuntimeError(f"could not download {url} ({e}). Download it by hand, or use a local folder "
                           "of photos (e.g. ../shared/data/portraits/train) as the training folder.") from e
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")
    return dest
