"""superres.metrics (the scores training and evaluation share) and `python -m superres evaluate`.

The evaluate runs need ../shared/data (skipped without it); everything else uses synthetic images."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import SHARED_DATA, astronaut
from superres import evaluate as ev
from superres import evaluation_output as eo
from superres import results
from superres.benchmark import make_lr
from superres.timing import measure_speed
from superres.__main__ import main
from superres.metrics import high_freq_ratio, lattice, psnr_y, rgb_to_y, spectral_distance, ssim, ssim_y


def const(rgb, h=32, w=32):
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, h, w).clone()


def photo(size=96):
    a = np.asarray(astronaut().resize((size, size), Image.LANCZOS), dtype=np.float32) / 255
    return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()


# ---- metrics ---------------------------------------------------------------------------------------
def test_rgb_to_y_is_bt601_studio_range():
    assert rgb_to_y(const([0, 0, 0])).flatten()[0].item() == pytest.approx(16 / 255)
    assert rgb_to_y(const([1, 1, 1])).flatten()[0].item() == pytest.approx(235 / 255)
    for i, coef in enumerate([65.481, 128.553, 24.966]):   # MATLAB rgb2ycbcr
        rgb = [0.0, 0.0, 0.0]
        rgb[i] = 1.0
        assert rgb_to_y(const(rgb)).flatten()[0].item() == pytest.approx((16 + coef) / 255, abs=1e-6)
    assert rgb_to_y(torch.rand(2, 3, 5, 7)).shape == (2, 1, 5, 7)


def test_psnr_known_value_identical_and_border():
    y = photo(64)
    assert math.isfinite(psnr_y(y, y).item()) and psnr_y(y, y).item() >= 99     # identical: capped, not inf
    # +10/255 on every channel moves Y by 10 * 219/255 / 255
    target = const([0.4, 0.5, 0.6])
    target = (target * 255).round() / 255
    want = -20 * math.log10(10 * 219 / 255 / 255)
    assert psnr_y(target + 10 / 255, target).item() == pytest.approx(want, abs=1e-3)
    # an error only in the outer 4 pixels disappears when 4 pixels are shaved
    bad = y.clone()
    bad[..., :4, :] = 0
    assert psnr_y(bad, y).item() < 30
    assert psnr_y(bad, y, border=4).item() >= 99


def test_ssim_identical_known_and_matches_scikit_image():
    from skimage.metrics import structural_similarity
    y = photo(80)
    assert ssim_y(y, y).item() == pytest.approx(1.0, abs=1e-6)
    noisy = ((y + 0.05 * torch.randn_like(y)).clamp(0, 1) * 255).round() / 255
    a, b = rgb_to_y(noisy)[0, 0].double().numpy(), rgb_to_y(y)[0, 0].double().numpy()
    ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=1.0)
    assert ssim_y(noisy, y).item() == pytest.approx(ref, abs=2e-4)


def test_separable_ssim_equals_the_11x11_window():
    a = torch.rand(2, 1, 40, 56)
    b = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    g = torch.exp(-(torch.arange(11.0) - 5) ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).view(1, 1, 11, 11)
    mu_a, mu_b = F.conv2d(a, w), F.conv2d(b, w)
    saa, sbb = F.conv2d(a * a, w) - mu_a ** 2, F.conv2d(b * b, w) - mu_b ** 2
    sab = F.conv2d(a * b, w) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ref = (((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))).mean((1, 2, 3))
    assert torch.allclose(ssim(a, b), ref, atol=1e-5)


def test_high_freq_ratio_direction():
    y = photo(96)
    assert high_freq_ratio(y, y).item() == pytest.approx(1.0, abs=1e-5)
    blurred = F.avg_pool2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    assert high_freq_ratio(blurred, y).item() < 0.8                       # over-smoothed
    torch.manual_seed(0)
    assert high_freq_ratio((y + 0.05 * torch.randn_like(y)).clamp(0, 1), y).item() > 1.05  # invented texture


# ---- evaluate: pieces that need no data --------------------------------------------------------------
def test_lr_making_and_sample_grid():
    hr = astronaut().resize((101, 66))
    hr = hr.crop((0, 0, 100, 64))
    for scale in (2, 4):
        assert make_lr(hr, scale).size == (100 // scale, 64 // scale)
        assert make_lr(hr, scale, 40).mode == "RGB"
    h = np.asarray(astronaut().resize((128, 128)))
    parts = {"input": h[::4, ::4], "target": h, results.label("bicubic", None): h, results.label("ours", 0.0): h}
    grid = eo.sample_grid(parts, crop=64)
    assert grid.size[0] == 4 * 64 + 3 * 4 and grid.size[1] > 64


def test_detail_grid_shows_each_region_enlarged_without_smoothing():
    h = np.asarray(astronaut().resize((256, 256)))
    parts = {"target": h, results.label("bicubic", None): h[::-1].copy(), results.label("ours", 0.5): h}
    grid = np.asarray(eo.detail_grid(parts, {"eye": (100, 90), "corner": (0, 0)}))
    c, side, pad, text_h = eo.DETAIL_CROP, eo.DETAIL_CROP * eo.DETAIL_ZOOM, 4, 20
    assert grid.shape[:2] == (text_h + 2 * (side + pad), 3 * side + 2 * pad)
    # third column (the target), second row (a corner, clamped into the image): nearest-neighbour enlargement
    cell = grid[text_h + side + pad:text_h + 2 * side + pad, 2 * (side + pad):2 * (side + pad) + side]
    assert np.array_equal(cell[40:, 40:], np.repeat(np.repeat(h[:c, :c], 2, 0), 2, 1)[40:, 40:])


def test_targets_and_markdown_from_rows():
    q = [{"set": "portraits512", "scale": 4, "method": "bicubic", "strength": None, "n_images": 3,
          "psnr_y": 34.0, "ssim_y": 0.9, "haarpsi": 0.8, "hf_ratio": 0.2},
         {"set": "portraits512", "scale": 4, "method": "ours", "strength": 0.0, "n_images": 3,
          "psnr_y": 36.5, "ssim_y": 0.93, "haarpsi": 0.85, "hf_ratio": 0.5},
         {"set": "portraits512", "scale": 4, "method": "ours", "strength": 1.0, "n_images": 3,
          "psnr_y": 35.0, "ssim_y": 0.91, "haarpsi": 0.86, "hf_ratio": 0.9}]
    speed = [{"method": "lapsrn", "strength": None, "options": {}, "input": "256x256", "output": "1024x1024",
              "scale": 4, "runs": 3, "seconds_per_image": 2.8, "min_seconds": 2.7, "megapixels_per_s": 0.37,
              "load_seconds": 0.5, "peak_rss_mb": 300.0},
             {"method": "ours", "strength": 0.5, "options": {"tile": "auto"}, "input": "256x256",
              "output": "1024x1024", "scale": 4, "runs": 5, "seconds_per_image": 0.3, "min_seconds": 0.29,
              "megapixels_per_s": 3.5, "load_seconds": 0.4, "peak_rss_mb": 400.0}]
    t = {x["id"]: x for x in results.check_targets(q, speed, 0.5)}
    assert t["portraits_x4_s0"]["passed"] is True and t["portraits_x4_s0"]["required"] == 36.0
    assert t["jpeg40_x4_default"]["passed"] is None and t["set14_x4_s0"]["passed"] is None   # not measured
    assert t["hf_s1_closer"]["passed"] is True and t["psnr_s1_above_bicubic"]["passed"] is True
    assert t["speed_x4_256"]["passed"] is True and t["speed_vs_lapsrn"]["measured"] == pytest.approx(9.33)
    report = {"command": "python -m superres evaluate", "created": "now", "quality": q, "speed": speed,
              "targets": list(t.values()), "model_card": None,
              "machine": {"cpu": "cpu", "cores": 2, "loadavg_start": 0.1}}
    md = eo.markdown_report(report)
    assert "| Ours (s=0) | 36.50 | 2.50 |" in md and "not measured" in md and "| LapSRN | ×4 | 1024x1024 | 2.800 |" in md
    rows = eo.quality_table(report, "portraits512", 4)
    assert [r["label"] for r in rows] == ["Bicubic", "Ours (s=0)", "Ours (s=1)"]


def test_command_line_lists_only_changed_options():
    import argparse
    p = argparse.ArgumentParser()
    ev.add_arguments(p)
    args = p.parse_args(["--limit", "2", "--no-speed", "--sets", "Set5,BSD100", "--strengths", "0,1"])
    assert ev.command_line(args) == ("python -m superres evaluate --sets Set5,BSD100 --strengths 0,1 "
                                     "--limit 2 --no-speed")
    with pytest.raises(SystemExit):
        p.parse_args(["--methods", "bicubic,nope"])


def test_speed_child_reports_its_own_memory():
    rows = measure_speed(["bicubic"], "/nonexistent", None, runs=3, log=lambda *a: None)
    (r,) = rows
    assert r["input"] == "256x256" and r["output"] == "1024x1024" and r["runs"] >= 3
    assert r["seconds_per_image"] > 0 and r["megapixels_per_s"] > 0
    assert 5 < r["peak_rss_mb"] < 500          # its own (no torch), not this process's


def test_missing_data_or_model_is_a_clear_error(tmp_path, capsys):
    assert main(["evaluate", "--data-root", str(tmp_path / "nowhere"), "--no-speed"]) == 2
    assert "--data-root" in capsys.readouterr().err
    if SHARED_DATA.is_dir():
        assert main(["evaluate", "--model-dir", str(tmp_path), "--sets", "Set5", "--no-speed"]) == 2
        err = capsys.readouterr().err
        assert "model" in err and "--methods" in err


def test_lattice_and_spectral_measures():
    """lattice is 1 and spectral 0 for the photo itself; a faint 4-px grid drives lattice up; a blurred copy
    (bicubic down and up) is far from the photo's detail spectrum."""
    y = np.asarray(astronaut().convert("L").resize((256, 256)), dtype=np.float64)
    assert lattice(y, y) == pytest.approx(1.0) and spectral_distance(y, y, 4) == pytest.approx(0.0)
    grid = y.copy()
    grid[::4, :] += 2.0                                        # under one grey level in the mean
    assert lattice(grid, y) > 20
    small = Image.fromarray(y.astype(np.uint8)).resize((64, 64), Image.BICUBIC).resize((256, 256), Image.BICUBIC)
    assert spectral_distance(np.asarray(small, dtype=np.float64), y, 4) > 1.0


# ---- evaluate on the real data ---------------------------------------------------------------------
@pytest.mark.shared_data
def test_bicubic_set5_x4_reproduces_the_published_convention(tmp_path, shared_data):
    """Bicubic on Set5 x4 gives 28.42 dB in the literature; our PIL bicubic + Y + shave gives 28.43."""
    assert main(["evaluate", "--sets", "Set5", "--scales", "4", "--methods", "bicubic", "--no-speed",
                 "--no-samples", "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "evaluation.json").read_text())["quality"]
    assert row["n_images"] == 5
    assert row["psnr_y"] == pytest.approx(28.43, abs=0.02)
    assert row["ssim_y"] == pytest.approx(0.811, abs=0.003)


@pytest.mark.shared_data
def test_evaluate_limit_2_writes_the_schema(untrained_model_dir, tmp_path, shared_data):
    out = tmp_path / "results"
    assert main(["evaluate", "--model-dir", str(untrained_model_dir), "--limit", "2", "--no-speed",
                 "--methods", "bicubic,lanczos,espcn,ours", "--strengths", "0", "--out", str(out)]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert {"format", "created", "command", "machine", "model_card", "quality", "speed", "targets"} <= set(report)
    assert {"cpu", "cores", "threads"} <= set(report["machine"])
    card = json.loads((untrained_model_dir / "model_card.json").read_text())
    assert report["model_card"]["sha256"] == card["sha256"] and report["model_card"]["untrained"] is True
    assert report["speed"] == [] and report["jpeg_network_use"] == {}   # the untrained folder has no JPEG network
    tasks = {(r["set"], r["scale"]) for r in report["quality"]}
    assert tasks == {("portraits512", 4), ("portraits512", 2), ("portraits512_jpeg40", 4),
                     ("portraits512_jpeg40", 2), ("Set5", 4), ("Set5", 2), ("Set14", 4), ("Set14", 2),
                     ("BSD100", 4)}
    methods = {(r["method"], r["strength"]) for r in report["quality"]}
    assert methods == {("bicubic", None), ("lanczos", None), ("espcn", None),
                       ("ours", 0.0), ("ours", card["default_strength"])}      # + the card's default strength
    for r in report["quality"]:
        assert set(r) == {"set", "scale", "method", "strength", "n_images", "psnr_y", "ssim_y", "haarpsi",
                          "hf_ratio", "lattice", "spectral"}
        assert r["lattice"] > 0 and r["spectral"] >= 0
        assert r["n_images"] == 2 and 15 < r["psnr_y"] < 60 and 0 < r["ssim_y"] <= 1
        assert 0 < r["haarpsi"] <= 1 and 0 < r["hf_ratio"] < 5
    # the untrained model is bicubic plus a tiny perturbation: within a dB of bicubic
    bic = results.find(report["quality"], "Set5", 4, "bicubic")["psnr_y"]
    assert abs(results.find(report["quality"], "Set5", 4, "ours", 0.0)["psnr_y"] - bic) < 1.5
    assert {t["id"] for t in report["targets"]} >= {"portraits_x4_s0", "jpeg40_x4_default", "set5_x4_s0"}
    md = (out / "evaluation.md").read_text()
    assert "untrained" in md and "## Set5 ×4 (2 images)" in md
    assert len((out / "evaluation_per_image.csv").read_text().splitlines()) == 1 + 9 * 2 * 5
    grids = sorted((out / "samples").glob("*_x4.png"))
    assert len(grids) == 2 and "CC BY 4.0" in (out / "samples" / "README.md").read_text()
    # close-ups for the sampled faces whose eye / mouth / hair edge are known (frll_126_03 is among the first two)
    details = sorted((out / "samples").glob("*_x4_details.png"))
    assert [p.name for p in details] == [f"{g.stem}_details.png" for g in grids if g.stem[:-3] in eo.SAMPLE_DETAILS]
    side = eo.DETAIL_CROP * eo.DETAIL_ZOOM   # three regions, one row each
    assert details and all(Image.open(p).height == 20 + 3 * (side + 4) for p in details)


def test_jpeg_network_use_counts_the_inputs_the_detector_flags(shared_data):
    from superres.evaluate import jpeg_network_use
    card = {"networks": {"4": {"faithful": "a", "gan": "b", "faithful_jpeg": "c"}, "2": {"faithful": "a", "gan": "b"}}}
    tasks = [("portraits512", 4), ("portraits512_jpeg40", 4), ("portraits512_jpeg40", 2)]
    assert jpeg_network_use(shared_data, tasks, card, 3) == {"portraits512 x4": [0, 3], "portraits512_jpeg40 x4": [3, 3]}
    report = {"machine": {"cpu": "c", "cores": 2, "loadavg_start": 0}, "command": "x", "created": "t",
              "model_card": {"name": "m", "sha256": {"a": "0" * 64}, "created": "t", "dir": "d"},
              "jpeg_network_use": {"portraits512_jpeg40 x4": [3, 3]}, "quality": [], "targets": []}
    assert "JPEG-trained faithful network at strengths below 1 (`superres.compression`): portraits512_jpeg40 x4 3 of 3." in eo.markdown_report(report)
