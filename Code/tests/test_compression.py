"""The JPEG detector (superres.runtime.compression): it reads JPEG quantisation from the pixels."""
import io

import numpy as np
from PIL import Image

from conftest import astronaut
from superres.runtime.compression import STEP_FOR_JPEG_NETWORK, jpeg_step, looks_jpeg_compressed


def jpeg(img: Image.Image, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_finds_the_quantisation_step_of_a_jpeg_and_none_in_a_clean_photo():
    img = astronaut().resize((256, 256), Image.LANCZOS)   # a photo that was never a JPEG
    assert jpeg_step(np.asarray(img)) == 0 and not looks_jpeg_compressed(np.asarray(img))
    assert not looks_jpeg_compressed(jpeg(img, 95))         # step 2: fine detail kept, the general network
    # the IJG step of luma (1,0) and (1,1) is 12 x the quality scale: 6 at quality 75, ~15 at 40, 30 at 20
    assert jpeg_step(jpeg(img, 75)) == STEP_FOR_JPEG_NETWORK
    assert 14 <= jpeg_step(jpeg(img, 40)) <= 16 and 28 <= jpeg_step(jpeg(img, 20)) <= 32
    assert looks_jpeg_compressed(jpeg(img, 40))


def test_a_rotated_jpeg_and_not_a_gradient():
    """EXIF rotation (applied on load) moves the block grid to another corner; a gradient's blocks all share one
    coefficient, which sits on "multiples" of many steps, and must not count."""
    small = jpeg(astronaut().resize((300, 227), Image.LANCZOS), 40)   # neither side a multiple of 8
    assert all(looks_jpeg_compressed(np.ascontiguousarray(np.rot90(small, k))) for k in range(4))
    ramp = np.repeat(np.tile(np.arange(512, dtype=np.float32)[:, None] * 0.5, (1, 512))[..., None], 3, axis=2)
    checker = (np.indices((512, 512)).sum(0) // 4 % 2 * 255)[..., None].repeat(3, axis=2)
    assert jpeg_step(ramp.astype(np.uint8)) == 0 and jpeg_step(checker.astype(np.uint8)) == 0


def test_what_it_cannot_see():
    img = astronaut().resize((256, 256), Image.LANCZOS)
    shifted = jpeg(img, 40)[3:-2, 5:-1]                      # cropped off the 8-px grid at every corner
    assert not looks_jpeg_compressed(shifted)
    assert jpeg_step(jpeg(img.resize((24, 24)), 20)) == 0  # nine blocks: too few to tell
    resized = np.asarray(Image.fromarray(jpeg(img, 40)).resize((384, 384), Image.BICUBIC))
    assert not looks_jpeg_compressed(resized)


def test_flags_every_jpeg40_evaluation_input_and_no_clean_one(shared_data):
    from superres.evaluation.benchmark import image_names, load_pair
    for set_name, flagged in (("portraits512", False), ("portraits512_jpeg40", True), ("Set14", False)):
        names = image_names(shared_data, set_name, 4, 999)
        assert len(names) >= 14
        assert all(looks_jpeg_compressed(load_pair(shared_data, set_name, 4, n)[0]) == flagged for n in names)


def test_soft_inputs_read_real_compressed_or_not_and_clean_sets_never_do(shared_data):
    """A blurred photo is "real" with or without a JPEG step (the real-world chain leaves some faces without one);
    no input of the clean evaluation sets is soft; a flat image has no gradient to judge by and stays clean."""
    from PIL import ImageFilter

    from superres.evaluation.benchmark import image_names, load_pair
    from superres.runtime.compression import input_kind
    photo = astronaut().resize((256, 256), Image.BICUBIC)
    blurred = photo.filter(ImageFilter.GaussianBlur(1.5))
    assert input_kind(np.asarray(photo)) == "clean" and input_kind(np.asarray(blurred)) == "real"
    assert input_kind(jpeg(photo, 40)) == "jpeg" and input_kind(jpeg(blurred, 40)) == "real"
    assert input_kind(np.full((64, 64, 3), 128, np.uint8)) == "clean"
    for set_name in ("portraits512", "Set5", "Set14"):
        kinds = {input_kind(load_pair(shared_data, set_name, 4, n)[0]) for n in image_names(shared_data, set_name, 4)}
        assert kinds == {"clean"}, set_name
    real = [input_kind(load_pair(shared_data, "portraits512_real", 4, n)[0])
            for n in image_names(shared_data, "portraits512_real", 4)]
    # measured: 45 real, 9 jpeg, 1 clean (4 of the 45 by their noise, frll_140_08 among them)
    assert real.count("real") >= 44 and real.count("clean") <= 1


def test_a_noisy_light_jpeg_reads_real_and_a_clean_one_or_a_noisy_png_does_not():
    """Noise raises the Laplacian, so a noisy photo reads sharp; sent on as a light JPEG (step 4, quality 85, above
    what counts as "jpeg") its even noise makes it "real". Without a JPEG step it stays clean: textured clean photos
    would read as noisy too (what it cannot see)."""
    from PIL import ImageFilter

    from superres.runtime.compression import NOISE_FLAT, flat_noise, input_kind, jpeg_step, sharpness
    soft = astronaut().resize((256, 256), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    grain = np.random.default_rng(0).normal(0, 8, (256, 256, 1))
    noisy = Image.fromarray((np.asarray(soft) + grain).clip(0, 255).round().astype(np.uint8))
    light = jpeg(noisy, 85)
    assert 0 < jpeg_step(light) < STEP_FOR_JPEG_NETWORK and sharpness(light) > 2 and flat_noise(light)[0] > NOISE_FLAT
    assert input_kind(light) == "real"
    assert input_kind(np.asarray(noisy)) == "clean"
    sharp = jpeg(astronaut().resize((256, 256), Image.BICUBIC), 85)
    assert jpeg_step(sharp) > 0 and input_kind(sharp) == "clean"
