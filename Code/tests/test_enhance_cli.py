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


def test_serving_modules_do_not_import_torch():
    code = ("import sys, superres.enhance, superres.inference, superres.imaging, superres.serve; "
            "bad = [m for m in ('torch', 'fastai') if m in sys.modules]; assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
