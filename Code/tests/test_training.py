"""Unit tests of the training package (degradations, models, losses, ONNX export, weight interpolation)
and integration tests that run the four fastai stages on real photos that packages ship."""
import json
import random
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from superres.training.data import Degradation, make_pair, sr_dataloaders
from superres.training.export import export_onnx
from superres.training.losses import (
    FeatureLoss,
    LatticeLoss,
    MSELoss,
    PolishLoss,
    WeightFreeLoss,
    WithLattice,
    gram_matrix,
    load_vgg16_bn,
    make_loss,
    phase_offsets,
)
from superres.training.metrics import psnr_y, ssim_y
from superres.training.models import (
    Generator,
    UnetConfig,
    UpscalePhases,
    blend_outputs,
    load_network,
    make_critic,
    make_encoder,
    upscale,
)

SMALL = UnetConfig(widen=0.25, nf=8, trunk_blocks=1, scale=2)


def photo(size=(200, 160), seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, size[0])[None, :, None] * np.linspace(0, 1, size[1])[:, None, None]
    a = (x * 200 + rng.normal(0, 20, (size[1], size[0], 3))).clip(0, 255).astype(np.uint8)
    return Image.fromarray(a)


# ---- degradations -----------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [2, 4])
def test_degradation_downscales_and_stays_rgb(scale):
    hr = photo((128, 96))
    lr = Degradation(scale=scale)(hr, random.Random(1))
    assert lr.size == (128 // scale, 96 // scale) and lr.mode == "RGB"


def test_degradation_is_reproducible_with_a_seed_and_varies_without():
    hr = photo((128, 128))
    d = Degradation(scale=2)
    a, b = d(hr, random.Random(7)), d(hr, random.Random(7))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    outs = {np.asarray(d(hr, random.Random(s))).tobytes() for s in range(12)}
    assert len(outs) > 1


def test_degradation_really_degrades():
    """Noise + JPEG + blur make the input further from a clean downscale than a clean downscale is."""
    hr = photo((128, 128))
    clean = np.asarray(hr.resize((64, 64), Image.BICUBIC), dtype=np.float32)
    harsh = Degradation(scale=2, clean_prob=0, blur_prob=1, noise_prob=1, noise_sigma=(10, 10), jpeg_prob=1,
                        jpeg_quality=(20, 20))
    lr = np.asarray(harsh(hr, random.Random(0)), dtype=np.float32)
    assert np.abs(lr - clean).mean() > 3


def test_make_pair_sizes(tmp_path):
    p = tmp_path / "a.png"
    photo((300, 260)).save(p)
    lr, hr = make_pair(p, 64, Degradation(scale=4), random.Random(0))
    assert hr.size == (64, 64) and lr.size == (16, 16)


def test_dataloaders_validation_is_deterministic(tmp_path):
    for i in range(3):
        photo((200, 180), seed=i).save(tmp_path / f"{i}.png")
    dls = sr_dataloaders(tmp_path, tmp_path, scale=2, hr_size=64, bs=2, repeats=2)
    xb, yb = dls.one_batch()
    assert xb.shape == (2, 3, 32, 32) and yb.shape == (2, 3, 64, 64)
    assert xb.dtype == yb.dtype == torch.float32   # uint8 through the workers, floats in [0,1] per batch
    assert 0 <= xb.min() and xb.max() <= 1
    v1 = [b[0].clone() for b in dls.valid]
    v2 = [b[0].clone() for b in dls.valid]
    assert all(torch.equal(a, b) for a, b in zip(v1, v2, strict=True))


# ---- models -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("size", [(64, 64), (37, 51), (20, 90)])
def test_generator_upscales_any_size(size, scale):
    g = Generator(replace(SMALL, scale=scale)).eval()
    x = torch.rand(1, 3, *size)
    y = upscale(g, x)
    assert y.shape == (1, 3, size[0] * scale, size[1] * scale)


def test_generator_works_at_the_input_size():
    """Only the PixelShuffle head touches the output size: every conv but the head's sees the input's size."""
    g = Generator(replace(SMALL, scale=4)).eval()
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
             for m in g.modules() if isinstance(m, torch.nn.Conv2d)]
    g(torch.rand(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert max(sizes) == 64


def test_head_keeps_sub_grey_detail_under_bf16_autocast():
    """Under bf16 autocast (how CPUSpeedup trains) the head and the residual add stay in fp32: a 0.1-grey change
    of the head's bias reaches a near-white output whole. In bf16 (steps of about one grey level there) it would
    vanish or become a whole step, and a sub-grey grid would be invisible to the loss."""
    torch.manual_seed(0)
    g = Generator(replace(SMALL, scale=4)).eval()
    x = 0.9 + 0.05 * torch.rand(1, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = g(x)
        g.head[0][0].bias += 0.1 / 255
        after = g(x)
    assert before.dtype == torch.float32
    assert torch.allclose(after - before, torch.full_like(before, 0.1 / 255), atol=1e-6)


@pytest.mark.parametrize("scale", [2, 4])
def test_untrained_generator_starts_near_bicubic_without_a_grid(scale):
    """ICNR: at the start every pixel of a PixelShuffle cell gets the same correction, so there is no grid."""
    torch.manual_seed(0)
    g = Generator(replace(SMALL, scale=scale)).eval()
    x = torch.rand(1, 3, 32, 32)
    ref = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    with torch.no_grad():
        d = g(x) - ref
    assert d.abs().mean() < 0.1
    cells = d.unfold(2, scale, scale).unfold(3, scale, scale)      # (1, 3, 32, 32, s, s)
    assert (cells - cells[..., :1, :1]).abs().max() < 1e-5


@pytest.mark.parametrize("scale", [2, 4])
def test_fixed_enlargements_bicubic_is_pytorchs_lanczos4_keeps_flat_areas_flat(scale):
    x = torch.rand(1, 3, 24, 20)
    bicubic = torch.nn.functional.pixel_shuffle(UpscalePhases(scale, "bicubic")(x), scale)
    ref = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    assert (bicubic - ref).abs().max() < 1e-5
    lanczos = UpscalePhases(scale, "lanczos4")
    flat = torch.nn.functional.pixel_shuffle(lanczos(torch.full((1, 3, 16, 16), 0.7)), scale)
    assert (flat - 0.7).abs().max() < 1e-6
    # a ramp comes out as the same ramp on the finer grid, within half a grey level (Lanczos ripples a little)
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    big = torch.nn.functional.pixel_shuffle(lanczos(ramp), scale)[0, 0, 0, 8 * scale: 24 * scale]
    pos = (torch.arange(8 * scale, 24 * scale) + 0.5) / scale - 0.5
    assert torch.allclose(big, pos / 31, atol=0.5 / 255)


def test_encoder_width_is_configurable():
    narrow = sum(p.numel() for p in make_encoder(UnetConfig(widen=0.25)).parameters())
    wide = sum(p.numel() for p in make_encoder(UnetConfig(widen=1.0)).parameters())
    assert wide > 4 * narrow


def test_pretrained_encoder_fails_clearly_offline():
    """Without internet the ImageNet download fails fast with a message that says what to do; with internet
    the ImageNet weights load (both outcomes are checked)."""
    try:
        enc = make_encoder(UnetConfig(arch="resnet18"), pretrained=True)
    except RuntimeError as e:
        assert "pretrained" in str(e) and "internet" in str(e)
    else:
        fresh = make_encoder(UnetConfig(arch="resnet18"), pretrained=False)
        assert any(not torch.equal(a, b) for a, b in zip(enc.parameters(), fresh.parameters(), strict=True))


def test_critic_scores_patches():
    c = make_critic(nf=16)
    assert c(torch.rand(2, 3, 64, 64)).shape[0] == 2


def test_image_seeing_critic_tells_apart_what_the_high_pass_cannot():
    # a flat offset (a halo's light band is one, locally) leaves the high-pass unchanged: only the
    # image-seeing critic's input, and so its score, can change
    x = torch.rand(1, 3, 64, 64) * 0.5
    brighter = x + 0.3
    blind, seeing = make_critic(nf=16).eval(), make_critic(nf=16, sees="image+highpass").eval()
    with torch.no_grad():
        assert torch.allclose(blind(x), blind(brighter), atol=1e-5)
        assert not torch.allclose(seeing(x), seeing(brighter), atol=1e-3)
        assert seeing[0](x).shape == (1, 6, 64, 64)


def test_grid_seeing_critic_is_shown_the_4px_pattern_whole_and_noise_of_its_power_weakly():
    """critic_sees="image+highpass+grid": the first 6 channels are the image-seeing critic's, the last 3 the local
    4-px pattern, amplified: a grid-locked dot pattern is shown at its full amplitude (x 32), white noise of the
    same power at well under it, and a ramp not at all."""
    torch.manual_seed(0)
    photo = torch.full((1, 3, 64, 64), 0.5)
    dots = torch.zeros_like(photo)
    dots[..., 0::4, 0::4], dots[..., 2::4, 2::4] = 0.02, -0.02
    noise = torch.randn_like(photo) * dots.std()
    ramp = torch.linspace(0.1, 0.9, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64)
    view = make_critic(nf=16, sees="image+highpass+grid")[0]
    with torch.no_grad():
        out = view(photo + dots)
        assert out.shape == (1, 9, 64, 64)
        assert torch.equal(out[:, :6], make_critic(nf=16, sees="image+highpass")[0](photo + dots))
        rms = lambda x: view(x)[:, 6:, 8:-8, 8:-8].pow(2).mean().sqrt().item()  # noqa: E731
        assert rms(photo + dots) > 0.95 * 32 * dots.std().item()
        assert rms(photo + noise) < 0.5 * rms(photo + dots)
        assert rms(ramp) < 1e-3


# ---- losses and metrics -----------------------------------------------------------------------------
def test_weightfree_loss_zero_for_identical_and_grows_with_error():
    loss = WeightFreeLoss()
    y = torch.rand(2, 3, 32, 32)
    assert loss(y, y).item() == pytest.approx(0, abs=1e-5)
    assert loss(y + 0.1 * torch.randn_like(y), y) > loss(y + 0.01 * torch.randn_like(y), y) > 0


def test_mse_loss_is_what_psnr_measures():
    y = torch.rand(2, 3, 32, 32)
    noisy = (y + 0.05 * torch.randn_like(y)).bfloat16()   # under bf16 autocast the prediction arrives as bf16
    assert make_loss("mse").name == "mse" and MSELoss()(y, y).item() == 0
    assert MSELoss()(noisy, y).item() == pytest.approx(((noisy.float() - y) ** 2).mean().item(), rel=1e-6)


def test_polish_loss_anchors_to_the_frozen_output_and_costs_a_grid():
    """The polish stage's loss is L1 to the network's own earlier output, not to the photo, plus the lattice loss:
    the photo itself costs only its distance from the anchor; a 4-px grid on the anchor costs more than its L1."""
    torch.manual_seed(0)
    photo = torch.rand(2, 3, 64, 64)
    before = (photo + 0.05 * torch.randn_like(photo)).clamp(0, 1)
    loss = PolishLoss(0.1)
    assert loss(before, photo, before).item() == pytest.approx(0.1 * LatticeLoss()(before, photo).item(), abs=1e-6)
    l1 = torch.nn.functional.l1_loss(photo, before).item()
    assert loss(photo, photo, before).item() == pytest.approx(l1, abs=1e-6)
    grid = torch.zeros(1, 1, 64, 64)
    grid[..., ::4, ::4] = 0.05
    l1_of_grid = grid.abs().mean().item()
    assert loss(before + grid, photo, before).item() > l1_of_grid + loss(before, photo, before).item()


def test_phase_polish_takes_dots_from_the_anchor_and_keeps_its_texture():
    """phase_offsets finds a 4-px dot pattern whole and a quarter of a smoother difference (what of it lies near the
    period's frequencies), so with phase_sigma the polish loss's anchor is the frozen output without its dots (the
    photo's periodic part instead), and close to the frozen output elsewhere."""
    torch.manual_seed(0)
    photo = torch.rand(1, 3, 64, 64) * 0.1 + 0.4
    dots = torch.zeros(1, 1, 64, 64)
    dots[..., 0::4, 0::4], dots[..., 2::4, 2::4] = 0.1, -0.1           # mean 0, period 4
    found = phase_offsets(dots, 4, 3.0)
    assert found.shape == dots.shape and torch.allclose(found, dots, atol=1e-6)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(1, 3, 72, 72), 9, 1) * 0.3    # smooth noise, no dots
    assert phase_offsets(smooth, 4, 3.0).abs().mean() < 0.3 * smooth.abs().mean()
    dotted, textured = photo + dots, photo + smooth
    loss = PolishLoss(0.0, phase_sigma=3.0, period=4)
    assert loss(photo, photo, dotted).item() < 1e-6                  # the anchor is the photo again
    assert loss(dotted, photo, dotted).item() == pytest.approx(dots.abs().mean().item(), rel=1e-3)
    assert loss(textured, photo, textured).item() < 0.3 * loss(photo, photo, textured).item()
    assert loss.name == "l1-to-self(periodic part from the photo, sigma 3)+0*lattice"


def test_blend_polish_scores_the_grid_of_the_blends_the_app_shows():
    """With strengths below 1 the polish's lattice term scores (1-s) faithful + s pred: a network whose grid
    cancels the faithful network's in the half-way blend costs nothing there, and a clean network costs something
    when the faithful one has a grid."""
    torch.manual_seed(0)
    photo = torch.rand(2, 3, 64, 64) * 0.2 + torch.linspace(0, 0.6, 64)[None, None, :, None]
    grid = torch.zeros(1, 1, 64, 64)
    grid[..., ::4, :] = 0.02
    half = PolishLoss(1.0, strengths=(0.5,))
    assert half.name == "l1-to-self+1*lattice at strengths 0.5"
    cancels = photo - grid
    assert half(cancels, photo, cancels, photo + grid).item() == pytest.approx(0.0, abs=1e-6)
    assert PolishLoss(1.0)(cancels, photo, cancels).item() > 0.1             # alone it has a grid
    assert half(photo, photo, photo, photo + grid).item() > 0.1              # clean, but the blend is not
    with pytest.raises(ValueError, match="strengths"):
        PolishLoss(1.0, strengths=(0, 1))                                   # the faithful network alone: no gradient
    both = PolishLoss(1.0, strengths=(0.5, 1))
    halved = half(photo, photo, photo, photo + grid).item() / 2
    assert both(photo, photo, photo, photo + grid).item() == pytest.approx(halved)


def test_lattice_loss_costs_a_grid_only():
    """Zero for the target itself, positive for a faint 4-px grid, and it has gradients to train with."""
    torch.manual_seed(0)
    y = torch.rand(2, 3, 64, 64) * 0.2 + torch.linspace(0, 0.6, 64)[None, None, :, None]
    grid = y.clone()
    grid[..., ::4, :] += 0.02
    grid.requires_grad_(True)
    loss = LatticeLoss()
    assert loss(y, y).item() == pytest.approx(0.0, abs=1e-6)
    value = loss(grid, y)
    value.backward()
    assert value.item() > 0.05 and grid.grad.abs().sum() > 0
    both = WithLattice(WeightFreeLoss(), 2.0)
    assert both(grid, y).item() == pytest.approx(WeightFreeLoss()(grid, y).item() + 2 * value.item(), rel=1e-5)


def test_windowed_lattice_loss_sees_a_local_grid_the_whole_crop_hardly_does():
    """Dots in one corner (as over hair or an eye): scored per 32-px window they cost more than over the 128-px crop;
    the windows are the crop's tiles, each scored as LatticeLoss scores a crop."""
    from superres.training.losses import _windows
    torch.manual_seed(0)
    y = torch.rand(2, 3, 128, 128) * 0.2 + torch.linspace(0, 0.6, 128)[None, None, :, None]
    dotted = y.clone()
    dotted[..., :32:4, :32:4] += 0.05
    whole, windowed = LatticeLoss()(dotted, y).item(), LatticeLoss(32)(dotted, y).item()
    assert LatticeLoss(32)(y, y).item() == pytest.approx(0.0, abs=1e-6) and windowed > 2 * whole
    tiles = _windows(dotted[:, :1], 32)
    assert tiles.shape == (2 * 16, 1, 32, 32) and torch.equal(tiles[1], dotted[0, :1, :32, 32:64])
    assert torch.equal(tiles[16], dotted[1, :1, :32, :32])
    with pytest.raises(ValueError, match="multiple of 8"):
        LatticeLoss(20)
    assert WithLattice(WeightFreeLoss(), 0.1, 64).name.endswith("0.1*lattice@64px")


def test_grid_loss_sees_local_dots_but_not_ramps_noise_or_the_photo_itself():
    """GridLoss: dots in one corner cost several times what white noise of the same power costs; a ramp has no
    local grid (the high-pass comes first); the photo against itself costs nothing, and a weaker grid than the
    photo's costs nothing either (one-sided)."""
    from superres.training.losses import GridLoss, WithGrid, local_grid
    torch.manual_seed(0)
    y = torch.rand(2, 3, 128, 128) * 0.1 + torch.linspace(0, 0.6, 128)[None, None, :, None]
    dots = torch.zeros_like(y)
    dots[..., :32:4, :32:4] = 0.2
    dots[..., :32, :32] -= dots[..., :32, :32].mean()
    noise = torch.zeros_like(y)
    noise[..., :32, :32] = torch.randn(2, 3, 32, 32) * dots[..., :32, :32].std()
    loss = GridLoss(period=4, sigma=3.0)
    assert loss(y, y).item() == pytest.approx(0.0, abs=1e-7)
    dotted = loss(y + dots, y).item()
    assert dotted > 3 * loss(y + noise, y).item() > 0
    assert loss(y, y + dots).item() < 0.01 * dotted
    ramp = torch.linspace(0, 1, 64)[:, None] * torch.linspace(0.2, 0.8, 64)[None, :]
    dot_grid = local_grid(dots[:1, :1], 4, 3.0)
    assert local_grid(ramp[None, None], 4, 3.0).max().item() < 0.1 * dot_grid.max().item()
    assert local_grid(ramp[None, None], 4, 3.0).shape == (1, 1, 16, 16)
    assert WithGrid(WeightFreeLoss(), 10).name.endswith("+10*grid")


def test_feature_loss_with_local_vgg_weights():
    """The lesson's feature loss, on a randomly initialised VGG16_bn (the real one needs a download)."""
    from torchvision.models import vgg16_bn
    loss = FeatureLoss(vgg16_bn(weights=None))
    assert len(loss.layer_ids) == 3
    y = torch.rand(1, 3, 64, 64)
    assert loss(y, y).item() == pytest.approx(0, abs=1e-5)
    assert loss(torch.rand(1, 3, 64, 64), y) > 0
    assert gram_matrix(torch.rand(2, 4, 8, 8)).shape == (2, 4, 4)


def test_feature_loss_fails_clearly_offline_and_auto_falls_back():
    """Offline: a clear error, and `auto` falls back to the weight-free loss; online: the feature loss."""
    try:
        vgg = load_vgg16_bn()
    except RuntimeError as e:
        assert "VGG16_bn" in str(e)
        assert make_loss("auto").name == "weightfree"
    else:
        assert sum(p.numel() for p in vgg.parameters()) > 1e7
        assert make_loss("auto").name == "feature"


def test_psnr_ssim():
    y = torch.rand(1, 3, 32, 32)
    assert ssim_y(y, y).item() == pytest.approx(1.0, abs=1e-4)
    noisy = (y + 0.05 * torch.randn_like(y)).clamp(0, 1)
    assert 20 < psnr_y(noisy, y).item() < 40


# ---- strength blending and ONNX -----------------------------------------------------------------
def test_blend_outputs_endpoints_and_midpoint():
    a, b = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    assert torch.equal(blend_outputs(a, b, 0.0), a) and torch.equal(blend_outputs(a, b, 1.0), b)
    assert torch.allclose(blend_outputs(a, b, 0.25), 0.75 * a + 0.25 * b, atol=1e-6)
    with pytest.raises(ValueError):
        blend_outputs(a, b, 1.5)


def test_onnx_matches_torch_at_other_sizes(tmp_path):
    g = Generator(SMALL).eval()
    with torch.no_grad():
        g.head[0][0].weight.normal_(0, 0.01)  # make the learned part non-zero
    export_onnx(g, tmp_path / "g.onnx")
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    for h, w in [(32, 32), (64, 96), (128, 32)]:
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            ref = g(x).numpy()
        out = sess.run(["output"], {"input": x.numpy()})[0]
        assert out.shape == (1, 3, 2 * h, 2 * w)
        assert np.abs(out - ref).max() < 1e-3   # weights stored as float16


# ---- the four stages, for real, on photos that packages ship -------------------------------------
@pytest.mark.slow
def test_four_stages_train_resume_and_export_both_scales(tmp_path, sample_photos):
    from superres.runtime.inference import Enhancer
    from superres.training.export import export_runs, network_files
    from superres.training.train import TrainConfig, train
    cfg = TrainConfig(data=str(sample_photos), valid=str(sample_photos), run_dir=str(tmp_path / "x2"), scale=2,
                      generator=SMALL, critic_nf=16, hr_size=64, bs=2, repeats=2, epochs_gen=2, epochs_critic=1,
                      epochs_gan=1, epochs_polish=1, loss="weightfree", critic_sees="highpass",
                      adversarial_weight=1.0, lattice_weight=0.0, gan_ema=0.9,   # the fastai lesson's (and an EMA
                      polish_strengths="0.5,1")   # of the GAN weights; a polish that scores blends); the defaults
    # (the shipped recipe: image+high-pass critic, weight 0.3, lattice 0.03) train in test_distributed.py
    run = train(cfg)
    rec = json.loads((tmp_path / "x2" / "record.json").read_text())
    assert set(rec["stages"]) == {"generator", "critic", "gan", "polish"}
    assert rec["stages"]["gan"]["weights_gen"] == [1.0, 50.0] and rec["config"]["critic_sees"] == "highpass"
    assert rec["stages"]["gan"]["ema"] == 0.9
    assert rec["stages"]["polish"]["loss"] == "l1-to-self+0.03*lattice at strengths 0.5,1"
    assert rec["stages"]["polish"]["strengths"] == [0.5, 1.0] and "psnr_y" in rec["stages"]["polish"]["valid"]
    assert rec["loss"] == "weightfree" and rec["degradation"]["x2"]["clean_prob"] == cfg.clean_prob
    for stage in rec["stages"].values():
        assert stage["steps"] > 0
    # GAN fine-tuning really changed the weights, so strength means something
    ck = run.path / "checkpoints"
    a = torch.load(ck / "generator_faithful.pt", weights_only=False)["model"]
    b = torch.load(ck / "generator_gan.pt", weights_only=False)["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    # ... and so did the polish, whose weights are the strength-1 end of the export below
    polished = torch.load(ck / "generator_polished.pt", weights_only=False)["model"]
    assert any(not torch.equal(polished[k], b[k]) for k in b if b[k].is_floating_point())
    # re-running is a no-op resume: finished stages are skipped, weights unchanged
    train(cfg)
    first = next(iter(b))
    assert torch.equal(torch.load(ck / "generator_gan.pt", weights_only=False)["model"][first], b[first])
    # an x4 run (generator only: strength 1 is then the faithful weights), exported together with the x2 run
    cfg4 = replace(cfg, run_dir=str(tmp_path / "x4"), scale=4, generator=replace(SMALL, scale=4), hr_size=128,
                   epochs_gen=1)
    train(cfg4, stages=("generator",))
    # and its JPEG twin: fine-tuned from it on JPEG-compressed inputs only, exported as x4_faithful_jpeg
    cfg4j = replace(cfg4, run_dir=str(tmp_path / "x4jpeg"), clean_prob=0.0, jpeg_prob=1.0, jpeg_quality="20,60",
                    loss="mse", init=str(tmp_path / "x4" / "checkpoints" / "generator_faithful.pt"))
    train(cfg4j, stages=("generator",))
    # mark the polished x2 network (+0.1 on every output pixel) to see which one the export takes for strength 1
    from superres.training.models import load_network, save_network
    marked = load_network(ck / "generator_polished.pt")
    marked.head[0][0].bias.data += 0.1
    save_network(marked, ck / "generator_polished.pt")
    card = export_runs([tmp_path / "x4", tmp_path / "x2"], tmp_path / "export", jpeg_run_dirs=[tmp_path / "x4jpeg"])
    assert card["scales"] == [2, 4] and card["networks"]["4"] == network_files(4, jpeg=True)
    assert card["networks"]["2"] == network_files(2) and set(card["jpeg_networks"]) == {"x4"}
    jpeg_deg = card["jpeg_networks"]["x4"]["degradation"]["x4"]
    assert jpeg_deg["clean_prob"] == 0 and jpeg_deg["jpeg_prob"] == 1 and jpeg_deg["jpeg_quality"] == [20, 60]
    assert card["jpeg_networks"]["x4"]["loss"] == "mse"
    assert card["losses"]["x2"]["generator"] == "weightfree" and card["stages"]["x2"]["gan"]["epochs"] == 1
    assert card["losses"]["x2"]["polish"] == "l1-to-self+0.03*lattice at strengths 0.5,1"
    assert "polish" not in card["losses"]["x4"]
    # the x2 GAN network is the polished one (marked above), not stage 3's
    x = torch.rand(1, 3, 32, 32)
    sess = ort.InferenceSession(str(tmp_path / "export" / "x2_gan.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want, stage3 = (load_network(ck / f).eval()(x).numpy() for f in ("generator_polished.pt", "generator_gan.pt"))
    got = sess.run(["output"], {"input": x.numpy()})[0]
    assert np.abs(got - want).max() < 1e-2 and np.abs((got - stage3).mean() - 0.1) < 1e-2
    assert "CC BY 4.0" in " ".join(card["data"]["x2"]["training_sets"]) or card["data"]["x2"]["training_sets"]
    for f in card["sha256"]:
        assert (tmp_path / "export" / f).stat().st_size > 20_000
    enhancer = Enhancer(tmp_path / "export")
    img = Image.open(next(iter(sorted(sample_photos.iterdir())))).convert("RGB").resize((48, 40))
    assert enhancer.enhance(img, scale=4).size == (192, 160) and enhancer.enhance(img, scale=2).size == (96, 80)
    assert enhancer.has_jpeg_network(4) and not enhancer.has_jpeg_network(2)
    assert (enhancer.enhance(img, scale=4, strength=0, jpeg=True)
            != enhancer.enhance(img, scale=4, strength=0, jpeg=False))


def test_gan_ema_averages_the_generator_only():
    """In the GAN stage the EMA follows the GANModule's generator, step by step, and puts the average into it when
    the fit ends; the critic keeps its own weights."""
    from types import SimpleNamespace

    from fastai.vision.gan import GANModule

    from superres.training.callbacks import EMA
    gan = GANModule(torch.nn.Conv2d(3, 3, 1), torch.nn.Conv2d(3, 1, 1))
    start, critic = gan.generator.weight.detach().clone(), gan.critic.weight.detach().clone()
    ema = EMA(0.75, part="generator")
    ema.learn = SimpleNamespace(model=gan)
    ema.before_fit()
    with torch.no_grad():
        gan.generator.weight.add_(1.0)
        gan.critic.weight.add_(1.0)
    ema.after_step()                 # average = 0.75 * start + 0.25 * (start + 1)
    ema.after_fit()
    assert torch.allclose(gan.generator.weight, start + 0.25) and torch.allclose(gan.critic.weight, critic + 1.0)


@pytest.mark.slow
def test_time_budget_ema_and_fine_tuning(tmp_path, sample_photos):
    """--minutes trains for a wall-clock budget (the schedule follows the clock), EMA weights are what is
    saved, and --init fine-tunes from a checkpoint."""
    import time

    from superres.training.train import TrainConfig, train
    cfg = TrainConfig(data=str(sample_photos), valid=str(sample_photos), run_dir=str(tmp_path / "a"), scale=2,
                      generator=SMALL, hr_size=64, bs=2, repeats=1, minutes_gen=0.1, loss="weightfree")
    t = time.perf_counter()
    train(cfg, stages=("generator",))
    assert time.perf_counter() - t < 60
    rec = json.loads((tmp_path / "a" / "record.json").read_text())["stages"]["generator"]
    assert rec["wall_s"] < 30 and rec["epochs"] >= 1 and rec["ema"] == cfg.ema
    first = tmp_path / "a" / "checkpoints" / "generator_faithful.pt"
    cfg2 = replace(cfg, run_dir=str(tmp_path / "b"), init=str(first), generator=replace(SMALL, nf=4),
                   minutes_gen=0, epochs_gen=1)
    train(cfg2, stages=("generator",))
    tuned = torch.load(tmp_path / "b" / "checkpoints" / "generator_faithful.pt", weights_only=False)
    assert tuned["config"]["nf"] == SMALL.nf   # the architecture came from --init, not from the config
    # except the fixed enlargement (no weights): --skip lanczos4 fine-tunes a bicubic-skip network with Lanczos-4
    train(replace(cfg2, run_dir=str(tmp_path / "e"), generator=replace(SMALL, skip="lanczos4")), stages=("generator",))
    assert load_network(tmp_path / "e" / "checkpoints" / "generator_faithful.pt").cfg.skip == "lanczos4"
    assert tuned["config"]["skip"] == "bicubic"
    with pytest.raises(ValueError, match="x2 generator"):
        train(replace(cfg2, run_dir=str(tmp_path / "c"), scale=4, hr_size=128), stages=("generator",))
    # --epochs-gen 0: the GAN stages start from the --init network exactly (how the shipped GANs were retrained)
    run = train(replace(cfg2, run_dir=str(tmp_path / "d"), epochs_gen=0), stages=("generator",))
    kept = torch.load(tmp_path / "d" / "checkpoints" / "generator_faithful.pt", weights_only=False)["model"]
    init = torch.load(first, weights_only=False)["model"]
    assert kept.keys() == init.keys() and all(torch.equal(kept[k], init[k]) for k in init)
    assert run.record["stages"]["generator"]["steps"] == 0


def test_photos_too_small_for_a_crop_are_left_out(tmp_path, capsys):
    for i, size in enumerate([(200, 180), (60, 300), (150, 150)]):
        photo(size, seed=i).save(tmp_path / f"{i}.png")
    dls = sr_dataloaders(tmp_path, tmp_path, scale=2, hr_size=64, bs=1, repeats=1)
    assert len(dls.train_ds) == 2 and "left out 1 of 3" in capsys.readouterr().out


@pytest.mark.slow
def test_interrupted_stage_resumes_from_its_epoch_checkpoint(tmp_path, sample_photos):
    from superres.training.train import Run, TrainConfig, dataloaders, train_generator
    cfg = TrainConfig(data=str(sample_photos), valid=str(sample_photos), run_dir=str(tmp_path / "run"), scale=2,
                      generator=SMALL, hr_size=64, bs=2, repeats=2, epochs_gen=1, loss="weightfree")
    run = Run(cfg)
    train_generator(run, dataloaders(cfg), WeightFreeLoss())
    # pretend the 2-epoch run was killed after epoch 0: the final weights are gone, the epoch checkpoint is there
    (run.path / "checkpoints" / "generator_faithful.pt").unlink()
    cfg.epochs_gen = 2
    train_generator(Run(cfg), dataloaders(cfg), WeightFreeLoss())
    log = (run.path / "logs" / "generator.csv").read_text().strip().splitlines()
    assert log[0].startswith("epoch,") and [line.split(",")[0] for line in log[1:]] == ["0", "1"]
    # one header; epoch 0 from the first run, then only epoch 1


@pytest.mark.slow
def test_critic_learns_to_tell_bicubic_from_real(sample_photos):
    """The critic must be able to learn at all: bicubic x2 of real photo crops vs. the crops themselves."""
    from fastai.vision.gan import AdaptiveLoss

    from superres.training.data import image_files, load_photo, random_crop
    torch.manual_seed(0)
    rng = random.Random(0)
    photos = [load_photo(str(p), 512) for p in image_files(sample_photos)]
    real = torch.stack([torch.from_numpy(np.asarray(random_crop(photos[i % 2], 64, rng), dtype=np.float32) / 255)
                        .permute(2, 0, 1) for i in range(16)])
    fake = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(real, 2), scale_factor=2, mode="bicubic",
                                           align_corners=False).clamp(0, 1)
    x, y = torch.cat([fake, real]), torch.cat([torch.zeros(16), torch.ones(16)])
    critic, loss_func = make_critic(nf=16), AdaptiveLoss(torch.nn.BCEWithLogitsLoss())
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
    for _ in range(60):
        loss = loss_func(critic(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.5  # ln 2 = 0.693 is chance


def test_onnx_strength_blend_equals_torch_output_blend(tmp_path):
    """The Enhancer's strength must be the same blend of the two generators' outputs as in torch."""
    from superres.runtime.inference import Enhancer
    from superres.training.export import export_models
    torch.manual_seed(0)
    faithful, gan = Generator(SMALL).eval(), Generator(SMALL).eval()
    with torch.no_grad():
        for m in (faithful, gan):
            m.head[0][0].weight.normal_(0, 0.05)
            for p in m.unet.parameters():
                p.add_(0.02 * torch.randn_like(p))
            for p in m.parameters():   # weights the files store exactly (float16), so torch and ONNX agree
                p.copy_(p.half().float())
    export_models({2: {"faithful": faithful, "gan": gan}}, tmp_path)
    enhancer = Enhancer(tmp_path)
    img = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    out = {}
    for s in (0.0, 0.3, 0.5, 1.0):
        ref = blend_outputs(upscale(faithful, x), upscale(gan, x), s)
        ref = ref.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255
        out[s] = np.asarray(enhancer.enhance(img, scale=2, strength=s, tile=0), dtype=np.float32)
        assert np.abs(out[s] - ref).max() <= 1.01  # uint8 rounding
    assert np.abs(out[0.5] - out[0.0]).mean() > 1.0  # the blend really moved the output


def test_int8_export_is_quantised_close_to_float_and_served(tmp_path, sample_photos):
    """export --int8: the U-Net and trunk convs become int8 (QDQ), the skip and head convs stay float, the output
    stays within a grey level of the float network's on average, and the Enhancer serves the folder as any other."""
    import onnx

    from superres.runtime.inference import Enhancer
    from superres.training.data import Degradation
    from superres.training.export import export_models
    from superres.training.quantize import FLOAT_CONVS, calibration_inputs
    torch.manual_seed(0)
    faithful, gan = Generator(SMALL).eval(), Generator(SMALL).eval()
    with torch.no_grad():
        for m in (faithful, gan):
            m.head[0][0].weight.normal_(0, 0.05)
    calib = calibration_inputs([sample_photos], Degradation(scale=2), n=4, hr_size=128)
    assert len(calib) == 4 and calib[0].shape == (1, 3, 64, 64) and calib[0].dtype == np.float32
    card = export_models({2: {"faithful": faithful, "gan": gan}}, tmp_path / "int8",
                         int8={2: {"faithful": calib, "gan": calib}})
    export_models({2: {"faithful": faithful, "gan": gan}}, tmp_path / "float")
    graph = onnx.load(str(tmp_path / "int8" / "x2_faithful.onnx")).graph
    quantised = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert any(c.input[0] in quantised for c in convs)                        # int8 convs ...
    kept = [c for c in convs if c.name.startswith(FLOAT_CONVS)]
    assert len(kept) == 2 and all(c.input[0] not in quantised for c in kept)  # ... but the skip and the head
    assert card["int8"]["mean_abs_error_vs_torch"]["x2_faithful"] < 3 / 255   # 7-bit weights; the trained x4: 0.0012
    # what this CPU's int8 kernels compute equals the graph's own arithmetic (QDQ step by step, no fused kernels):
    # with 8-bit weights, CPUs without VNNI saturated (0.025 apart on this network; see superres.training.quantize)
    fused, stepwise = ort.SessionOptions(), ort.SessionOptions()
    stepwise.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    runs = [ort.InferenceSession(str(tmp_path / "int8" / "x2_faithful.onnx"), so, providers=["CPUExecutionProvider"])
            .run(["output"], {"input": calib[0]})[0] for so in (fused, stepwise)]
    assert np.abs(runs[0] - runs[1]).mean() < 0.5 / 255
    img = Image.fromarray(np.asarray(Image.open(next(sample_photos.iterdir())).convert("RGB").resize((64, 64))))
    outs = [np.asarray(Enhancer(tmp_path / d).enhance(img, scale=2, strength=0.5), np.float32)
            for d in ("int8", "float")]
    assert np.abs(outs[0] - outs[1]).mean() < 2.0   # grey levels; a random network quantises worse than ours
