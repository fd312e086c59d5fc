"""python -m superres enhance: files, folders, names, formats, failures and the no-model error."""
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO, astronaut, grace_hopper


def enhance(*args, env=None):
    return subprocess.run([sys.executable, "-m", "superres", "enhance", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    astronaut().resize((64, 64)).save(d / "astro.png")
    grace_hopper().resize((48, 56)).save(d / "face.jpg")
    rgba = astronaut().resize((40, 30)).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "logo.webp", lossless=True)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "notes.txt").write_text("ignored: not an image extension")
    return d


def test_single_file_keeps_name_as_png(untrained_model_dir, photos, tmp_path):
    res = enhance("-i", photos / "face.jpg", "-o", tmp_path, "--model-dir", untrained_model_dir)
    assert res.returncode == 0, res.stderr
    out = Image.open(tmp_path / "face.png")
    assert out.size == (48 * 4, 56 * 4)
    assert "face.png" in res.stdout


def test_folder_with_bad_file_reports_and_continues(untrained_model_dir, photos, tmp_path):
    res = enhance("-i", photos, "-o", tmp_path, "-s", "2", "--suffix", "x2", "--strength", "0.2",
                  "-t", "32", "--model-dir", untrained_model_dir)
    assert res.returncode == 1                      # one file failed
    assert "broken.jpg" in res.stderr and "damaged" in res.stderr
    assert "Traceback" not in res.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["astro_x2.png", "face_x2.png", "logo_x2.png"]
    logo = Image.open(tmp_path / "logo_x2.png")
    assert logo.mode == "RGBA" and logo.size == (80, 60)
    assert "wrote 3 of 4 images" in res.stdout


def test_jpeg_output(untrained_model_dir, photos, tmp_path):
    res = enhance("-i", photos / "logo.webp", "-o", tmp_path, "-s", "2", "--ext", "jpg",
                  "--model-dir", untrained_model_dir)
    assert res.returncode == 0, res.stderr
    out = Image.open(tmp_path / "logo.jpg")
    assert out.format == "JPEG" and out.mode == "RGB" and out.size == (80, 60)


def test_no_model_is_a_clear_error(photos, tmp_path):
    res = enhance("-i", photos / "face.jpg", "-o", tmp_path, "--model-dir", tmp_path / "missing")
    assert res.returncode == 2
    assert "No model found" in res.stderr and "Traceback" not in res.stderr
    assert not list(tmp_path.glob("*.png"))         # never a plain resize instead


def test_bad_arguments(untrained_model_dir, photos, tmp_path):
    assert enhance("-i", tmp_path / "nothing.png", "--model-dir", untrained_model_dir).returncode == 2
    assert enhance("-i", photos / "face.jpg", "-s", "3").returncode == 2             # argparse choice
    res = enhance("-i", photos / "face.jpg", "--strength", "2", "--model-dir", untrained_model_dir)
    assert res.returncode == 2 and "strength" in res.stderr


def test_serving_modules_do_not_import_torch_or_onnx():
    code = ("import sys, superres.runtime.enhance, superres.runtime.inference, superres.runtime.imaging, "
            "superres.runtime.jobs, superres.runtime.serve, "
            "superres.runtime.upload; superres.runtime.inference.Enhancer(); "
            "bad = [m for m in ('torch', 'fastai', 'onnx') if m in sys.modules]; assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr


# ---- files are never lost -----------------------------------------------------------------------------------
def test_same_stem_in_one_folder_gives_two_outputs(untrained_model_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    astronaut().resize((32, 32)).save(src / "x.png")
    grace_hopper().resize((32, 32)).save(src / "x.jpg")
    res = enhance("-i", src, "-o", tmp_path / "out", "-s", "2", "--model-dir", untrained_model_dir)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.jpg.png", "x.png.png"]
    assert "wrote 2 of 2 images" in res.stdout


def test_output_into_the_input_folder_never_replaces_an_input(untrained_model_dir, tmp_path):
    astronaut().resize((32, 32)).save(tmp_path / "x.png")
    original = (tmp_path / "x.png").read_bytes()
    res = enhance("-i", tmp_path, "-o", tmp_path, "-s", "2", "--model-dir", untrained_model_dir)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "x.png").read_bytes() == original
    assert Image.open(tmp_path / "x.png.png").size == (64, 64)


def test_existing_outputs_need_overwrite(untrained_model_dir, photos, tmp_path):
    (tmp_path / "face.png").write_bytes(b"keep me")
    res = enhance("-i", photos / "face.jpg", "-o", tmp_path, "--model-dir", untrained_model_dir)
    assert res.returncode == 2 and "--overwrite" in res.stderr and "Traceback" not in res.stderr
    assert (tmp_path / "face.png").read_bytes() == b"keep me"
    res = enhance("-i", photos / "face.jpg", "-o", tmp_path, "--overwrite", "--model-dir", untrained_model_dir)
    assert res.returncode == 0, res.stderr
    assert Image.open(tmp_path / "face.png").size == (48 * 4, 56 * 4)


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_bad_output_folder_is_one_line_and_exit_2(untrained_model_dir, photos, tmp_path, where):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    out = blocker if where == "a file" else blocker / "sub"
    res = enhance("-i", photos, "-o", out, "--model-dir", untrained_model_dir)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write to the output folder"), res.stderr


def test_ctrl_c_leaves_only_whole_files(untrained_model_dir, tmp_path):
    """SIGINT in the middle of a folder: exit 130, a one-line note, and every file in the output folder is a
    complete image (saves go to a temporary name first)."""
    import signal
    import time
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(8):                              # ~1 s each on 2 cores: time to interrupt after the first
        astronaut().resize((640 + 8 * i, 640)).save(src / f"p{i}.png")
    # (as in a terminal: a test run started in the background, e.g. with nohup or `&`, ignores SIGINT, and a
    # child would inherit that)
    proc = subprocess.Popen([sys.executable, "-m", "superres", "enhance", "-i", src, "-o", out, "-s", "2",
                             "--model-dir", untrained_model_dir], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not (out.is_dir() and any(out.glob("*.png"))) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    files = sorted(out.iterdir())
    assert files and all(p.suffix == ".png" and not p.name.startswith(".") for p in files)
    for p in files:
        Image.open(p).load()                        # each one whole
    assert len(files) < 8


def test_webp_lossless_by_default_and_quality(untrained_model_dir, photos, tmp_path):
    """--ext webp is lossless (the PNG's pixels); -q makes WebP and JPEG lossy at that quality."""
    import numpy as np
    runs = {"png": (), "webp": ("--ext", "webp"), "webp_q": ("--ext", "webp", "-q", "60"),
            "jpg_q": ("--ext", "jpg", "-q", "40")}
    outs = {}
    for name, extra in runs.items():
        res = enhance("-i", photos / "astro.png", "-o", tmp_path / name, "-s", "2", *extra,
                      "--model-dir", untrained_model_dir)
        assert res.returncode == 0, res.stderr
        outs[name] = next((tmp_path / name).iterdir())
    pixels = {k: np.asarray(Image.open(p).convert("RGB")).astype(int) for k, p in outs.items()}
    assert np.array_equal(pixels["webp"], pixels["png"])
    assert 0 < np.abs(pixels["webp_q"] - pixels["png"]).mean() < 8
    assert 0 < np.abs(pixels["jpg_q"] - pixels["png"]).mean() < 8
    res = enhance("-i", photos / "astro.png", "-o", tmp_path / "bad", "-q", "0", "--model-dir", untrained_model_dir)
    assert res.returncode == 2 and "--quality" in res.stderr


def test_jpeg_network_auto_yes_no(tmp_path):
    """--jpeg auto picks the JPEG-trained network for a compressed input; yes/no force it either way."""
    import numpy as np

    from superres.training.export import export_untrained
    export_untrained(tmp_path / "model", scales=(2,), jpeg_scales=(2,))
    astronaut().resize((128, 128), Image.LANCZOS).save(tmp_path / "q40.jpg", quality=40)
    outs = {}
    for choice in ("auto", "yes", "no"):
        res = enhance("-i", tmp_path / "q40.jpg", "-o", tmp_path / choice, "-s", "2", "--strength", "0",
                      "--jpeg", choice, "--model-dir", tmp_path / "model")
        assert res.returncode == 0, res.stderr
        outs[choice] = np.asarray(Image.open(tmp_path / choice / "q40.png"))
    assert np.array_equal(outs["auto"], outs["yes"]) and not np.array_equal(outs["yes"], outs["no"])
    assert enhance("-i", tmp_path / "q40.jpg", "-o", tmp_path, "--jpeg", "maybe").returncode == 2
    res = enhance("-i", tmp_path / "q40.jpg", "-o", tmp_path / "x4", "--jpeg", "yes", "--model-dir", tmp_path / "model")
    assert res.returncode == 2 and "no network for compressed inputs at x4" in res.stderr   # the folder has x2 only
