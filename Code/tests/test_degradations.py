"""The real-world degradation chain (superres.training.degradations): sizes, seeding, what each step does, and its use
in training batches."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from superres.training.data import DegradeBatch, degradation_from_record, sr_dataloaders
from superres.training.degradations import FIRST, RealWorld, Round, blur_kernels, seed_for


def photo(size=(192, 160), seed=0):
    """A photo-like test image: a gradient, edges and texture."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, size[0])[None, :, None] * np.linspace(0, 1, size[1])[:, None, None]
    a = x * 180 + rng.normal(0, 15, (size[1], size[0], 3))
    a[size[1] // 3: size[1] // 2] += 60
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("scale", [2, 4])
def test_degrade_image_has_the_low_resolution_size_and_is_seeded(scale):
    hr = photo()
    chain = RealWorld(scale=scale)
    a, b = chain.degrade_image(hr, 7), chain.degrade_image(hr, 7)
    assert a.size == (hr.width // scale, hr.height // scale) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))            # same seed: the same pixels
    outs = {chain.degrade_image(hr, s).tobytes() for s in range(6)}
    assert len(outs) == 6                                          # other seeds: other degradations


def test_the_chain_degrades_more_than_a_bicubic_downscale():
    hr = photo()
    clean = np.asarray(hr.resize((48, 40), Image.BICUBIC), np.float32)
    diffs = [np.abs(np.asarray(RealWorld(scale=4).degrade_image(hr, s), np.float32) - clean).mean() for s in range(8)]
    assert np.mean(diffs) > 3


def test_clean_prob_one_is_a_bicubic_downscale():
    hr = torch.rand(3, 3, 64, 64)
    lr = RealWorld(scale=4, clean_prob=1.0).degrade(hr, seed=1)
    want = torch.nn.functional.interpolate(hr, size=(16, 16), mode="bicubic", antialias=True).clamp(0, 1)
    assert torch.allclose(lr, (want * 255).round() / 255, atol=1e-6)


def test_degrade_batches_quantise_to_8_bits_and_reject_bad_shapes():
    lr = RealWorld(scale=2).degrade(torch.rand(4, 3, 64, 48), seed=3)
    assert lr.shape == (4, 3, 32, 24) and 0 <= lr.min() and lr.max() <= 1
    assert torch.allclose(lr * 255, (lr * 255).round(), atol=1e-4)
    with pytest.raises(ValueError, match="divide by the scale"):
        RealWorld(scale=4).degrade(torch.rand(1, 3, 62, 64))
    with pytest.raises(ValueError, match="B, 3, H, W"):
        RealWorld(scale=4).degrade(torch.rand(3, 64, 64))


def test_blur_kernels_sum_to_one_and_anisotropic_ones_are_not_round():
    gen = torch.Generator().manual_seed(0)
    iso = blur_kernels(gen, 4, Round(kernel_probs=(1, 0, 0, 0), blur_sigma=(2, 2)), 1.0)
    aniso = blur_kernels(gen, 64, Round(kernel_probs=(0, 1, 0, 0), blur_sigma=(0.5, 3)), 1.0)
    assert torch.allclose(iso.sum((1, 2)), torch.ones(4)) and torch.allclose(aniso.sum((1, 2)), torch.ones(64))
    assert torch.allclose(iso, iso.transpose(1, 2), atol=1e-6)            # isotropic: symmetric
    assert (aniso - aniso.transpose(1, 2)).abs().amax(dim=(1, 2)).max() > 1e-3


def test_the_chain_is_recorded_and_read_back():
    chain = RealWorld(scale=2, clean_prob=0.3)
    d = json.loads(json.dumps(chain.to_dict()))
    assert degradation_from_record(d) == chain and d["first"]["blur_sigma"] == list(FIRST.blur_sigma)
    assert degradation_from_record({"scale": 4, "clean_prob": 0.2}).clean_prob == 0.2     # the first-order Degradation


def test_seed_for_is_stable():
    assert seed_for("face.jpg") == seed_for("face.jpg") != seed_for("face2.jpg")
    assert seed_for("a.png") == 1589947247   # crc32: the same on every machine and run


def test_training_batches_are_degraded_on_the_device_and_validation_is_seeded(tmp_path):
    for i in range(3):
        photo((200, 180), seed=i).save(tmp_path / f"{i}.png")
    chain = RealWorld(scale=4, clean_prob=0.25)
    dls = sr_dataloaders(tmp_path, tmp_path, scale=4, hr_size=64, bs=2, repeats=2, degradation=chain)
    assert any(isinstance(t, DegradeBatch) for t in dls.train.after_batch.fs)
    xb, yb = dls.train.one_batch()
    assert xb.shape == (2, 3, 16, 16) and yb.shape == (2, 3, 64, 64)
    xv, yv = dls.valid.one_batch()
    assert xv.shape == (2, 3, 16, 16)
    v1 = [b[0].clone() for b in dls.valid]
    v2 = [b[0].clone() for b in dls.valid]
    assert all(torch.equal(a, b) for a, b in zip(v1, v2, strict=True))
