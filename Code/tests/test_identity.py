"""The identity distance (superres.evaluation.identity): the same face lightly blurred stays close, two people are far
apart, a target without a face is reported as such, and an output is measured in the target's box.

Real portraits that packages ship: scikit-image's astronaut (Eileen Collins) and matplotlib's Grace Hopper."""
import importlib.util

import numpy as np
import pytest
from PIL import Image, ImageFilter

from conftest import astronaut, grace_hopper, require


@pytest.fixture(scope="module")
def faces():
    require(importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models")
            is not None, "needs dlib-bin and face_recognition_models (pip install -e '.[eval]')")
    from superres.evaluation.identity import FaceIdentity
    return FaceIdentity()


def rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def test_same_face_slightly_blurred_is_far_closer_than_two_people(faces):
    a, g = rgb(astronaut()), rgb(grace_hopper())
    fa, fg = faces.find(a), faces.find(g)
    assert fa is not None and fg is not None
    blurred = rgb(astronaut().filter(ImageFilter.GaussianBlur(1)))
    same = faces.distance(blurred, fa)
    other = float(np.linalg.norm(fa.descriptor - fg.descriptor))
    assert faces.distance(a, fa) == pytest.approx(0.0, abs=1e-6)      # the target itself
    assert same < 0.3 and other > 0.6                                # dlib's same-person threshold is 0.6
    assert same < other / 2


def test_the_distance_grows_with_the_damage(faces):
    a = astronaut()
    face = faces.find(rgb(a))
    small = a.resize((a.width // 8, a.height // 8), Image.BICUBIC).resize(a.size, Image.BICUBIC)
    d1 = faces.distance(rgb(a.filter(ImageFilter.GaussianBlur(1))), face)
    d8 = faces.distance(rgb(small), face)
    assert d1 < d8


def test_the_best_scoring_face_is_kept_and_its_box_reused_on_the_output(faces):
    """The astronaut photo has a second, weak detection (the mission patch): the face is the best-scoring box.
    An output with no detectable face is still measured in the target's box (no method is excused)."""
    a = rgb(astronaut())
    face = faces.find(a)
    left, top, right, bottom = face.box
    assert 150 < left < 200 and 50 < top < 110 and right - left > 60          # the face, not the patch
    flat = np.full_like(a, 128)
    assert faces.find(flat) is None                                           # no face: None, not an error
    d = faces.distance(flat, face)
    assert np.isfinite(d) and d > 0.6
    pts = faces.points(a, face.box)
    assert len(pts) == 5 and all(left - 20 <= x <= right + 20 and top - 20 <= y <= bottom + 20 for x, y in pts)


def test_uses_the_5_point_model_not_the_68_point_one():
    from superres.evaluation import identity
    assert identity.LANDMARKS == "shape_predictor_5_face_landmarks.dat"
    assert "68" not in identity.LANDMARKS + identity.DESCRIPTOR


def test_aggregate_counts_targets_without_a_face_and_pairs_subsets_with_bicubic():
    """Identity averages over the images with a face and counts the others; a method run on fewer images
    gets bicubic's scores on those same images."""
    from superres.evaluation.scoring import aggregate
    base = {"ssim_y": 0.9, "haarpsi": 0.8, "hf_ratio": 0.5, "lattice": 2.0, "spectral": 1.0}
    rows = []
    for i, (name, ident) in enumerate([("a", 0.3), ("b", None), ("c", 0.5)]):
        rows.append({"set": "portraits512_real", "scale": 4, "method": "bicubic", "strength": None, "image": name,
                     "psnr_y": 30.0 + i, "identity": ident, **base})
    rows.append({"set": "portraits512_real", "scale": 4, "method": "realesrgan", "strength": None, "image": "c",
                 "psnr_y": 31.0, "identity": 0.4, **base})
    rows.append({"set": "BSD100_real", "scale": 4, "method": "bicubic", "strength": None, "image": "x",
                 "psnr_y": 25.0, "identity": None, **base})
    by = {(r["set"], r["method"]): r for r in aggregate(rows)}
    bic = by[("portraits512_real", "bicubic")]
    assert bic["identity"] == pytest.approx(0.4) and bic["identity_faces"] == 2 and bic["identity_missed"] == 1
    gan = by[("portraits512_real", "realesrgan")]
    assert gan["n_images"] == 1 and gan["bicubic_same_images"] == {"psnr_y": 32.0, "identity": 0.5}
    assert "bicubic_same_images" not in bic
    assert by[("BSD100_real", "bicubic")]["identity"] is None       # not a face set


def test_markdown_says_what_was_missed_and_what_ran_on_fewer_images():
    from superres.evaluation import evaluation_output as eo
    row = {"set": "portraits512_real", "scale": 4, "strength": None, "ssim_y": 0.9, "haarpsi": 0.8, "hf_ratio": 0.5,
           "lattice": 2.0, "spectral": 1.0}
    q = [{**row, "method": "bicubic", "n_images": 10, "psnr_y": 30.0, "identity": 0.4, "identity_faces": 9,
          "identity_missed": 1},
         {**row, "method": "realesrgan", "n_images": 4, "psnr_y": 31.0, "identity": 0.45, "identity_faces": 4,
          "identity_missed": 0, "bicubic_same_images": {"psnr_y": 29.5, "identity": 0.42}}]
    md = "\n".join(eo.quality_markdown({"quality": q}, "portraits512_real", 4))
    assert "| identity |" in md and "| Real-ESRGAN | 31.00 | 1.50 |" in md      # Δ against bicubic on its 4 images
    assert "a face was found on 9 of the 10 targets" in md and "ran on 4 of the 10 images" in md
    assert eo.quality_title({"quality": q}, "portraits512_real", 4).endswith("(10 images)")
