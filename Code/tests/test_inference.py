"""superres.runtime.inference.Enhancer: model folder checks, strength blending, tiling, alpha/grayscale/ICC."""
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFilter

from conftest import astronaut, grace_hopper
from superres.runtime.inference import Enhancer, ModelError, read_card


@pytest.fixture(scope="module")
def enhancer(untrained_model_dir):
    return Enhancer(untrained_model_dir, threads=2)


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="No model found.*does not exist.*MODEL_DIR"):
        Enhancer(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="has no model_card.json"):
        Enhancer(tmp_path)


def test_tampered_model_is_refused(untrained_model_dir, tmp_path):
    bad = tmp_path / "model"
    shutil.copytree(untrained_model_dir, bad)
    with open(bad / "x4_gan.onnx", "r+b") as f:
        f.seek(-10, 2)
        f.write(b"0123456789")
    with pytest.raises(ModelError, match="does not match its model card"):
        Enhancer(bad)
    (bad / "x4_gan.onnx").unlink()
    with pytest.raises(ModelError, match="lacks x4_gan.onnx"):
        Enhancer(bad)


def test_old_model_format_is_refused_with_advice(untrained_model_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(untrained_model_dir, old)
    card = json.loads((old / "model_card.json").read_text())
    card["format"] = 1
    (old / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="format 1.*Re-export"):
        Enhancer(old)


def test_card_read(untrained_model_dir, enhancer):
    card = read_card(untrained_model_dir)
    assert card["input_multiple"] == enhancer.multiple == 32
    assert enhancer.scales == [2, 4]
    assert enhancer.default_strength == card["default_strength"]


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("size", [(1, 1), (37, 53), (64, 32), (100, 70)])
def test_output_size_any_input(enhancer, scale, size):
    img = astronaut().resize(size)
    out = enhancer.enhance(img, scale=scale)
    assert out.size == (size[0] * scale, size[1] * scale) and out.mode == "RGB"


def test_untrained_model_is_close_to_bicubic(enhancer):
    img = grace_hopper().resize((120, 140))
    out = np.asarray(enhancer.enhance(img, scale=2)).astype(int)
    bicubic = np.asarray(img.resize((240, 280), Image.Resampling.BICUBIC)).astype(int)
    assert np.abs(out - bicubic).mean() < 4


@pytest.mark.parametrize("scale", [2, 4])
def test_tiling_equals_whole_image(enhancer, scale):
    """Small tiles (many seams) against one pass over the whole image: same result within a small tolerance."""
    rgb = np.asarray(astronaut())[100:300, 120:290]          # 200 x 170, not a multiple of 32
    whole = enhancer.enhance_array(rgb, scale, tile=0).astype(int)
    tiled = enhancer.enhance_array(rgb, scale, tile=64, tile_pad=32).astype(int)
    diff = np.abs(whole - tiled)
    assert whole.shape == (200 * scale, 170 * scale, 3)
    assert diff.max() <= 2 and diff.mean() < 0.1
    # no seam: rows/columns at tile borders differ from whole-image no more than anywhere else
    border_rows = diff[[64 * scale - 1, 64 * scale, 128 * scale - 1, 128 * scale]].mean()
    assert border_rows < 0.2


def test_auto_tile_bounds_network_input(enhancer):
    from superres.runtime.inference import MAX_NET_INPUT
    t = enhancer.auto_tile()
    assert t % 32 == 0 and t + 64 <= MAX_NET_INPUT


def test_progress_callback(enhancer):
    seen = []
    enhancer.enhance_array(np.zeros((100, 100, 3), np.uint8), 2, tile=64, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]


def test_progress_can_stop_the_work_at_the_next_tile(enhancer):
    """The web app's cancel and timeout: the callback raises and no further tile runs."""
    from superres.runtime.inference import Cancelled
    seen = []

    def stop_after_two(done, total):
        seen.append(done)
        if done == 2:
            raise Cancelled()
    with pytest.raises(Cancelled):
        enhancer.enhance(Image.new("RGB", (200, 200)), 2, tile=64, progress=stop_after_two)
    assert seen == [0, 1, 2]                       # of 16 tiles


def test_work_counts_padding_and_tile_context(enhancer):
    """What an image costs is the network's input: a thin strip is padded to 32 rows and cut into many tiles."""
    square = enhancer.work(256, 256)
    assert square == 256 * 256                     # one tile, no padding
    thin = enhancer.work(65536, 1)
    assert thin > 30 * 65536 and thin > 30 * square
    assert enhancer.work(16_000_000, 1) > 500e6    # a 16000000x1 PNG is 0.32 MB: a 512-megapixel job
    tile, pad, ys, xs = enhancer.tiles(1000, 700, tile=320)
    assert (tile, pad, len(ys), len(xs)) == (320, 32, 3, 4)


def test_strength_blends_the_two_outputs(enhancer):
    rgb = np.asarray(astronaut().resize((64, 64)))
    outs = {s: enhancer.enhance_array(rgb, 2, strength=s).astype(float) for s in (0.0, 0.25, 1.0)}
    assert np.abs(outs[0.0] - outs[1.0]).mean() > 0.05        # the two generators really differ
    # (1 - s) * faithful + s * gan, up to the rounding of each end to uint8 (where neither end was clipped)
    inside = (outs[0.0] % 255 > 0) & (outs[1.0] % 255 > 0)
    assert inside.mean() > 0.5
    assert np.abs(outs[0.25] - (0.75 * outs[0.0] + 0.25 * outs[1.0]))[inside].max() <= 1.0
    faithful, gan = (net for _, net in enhancer.networks(2, 0.5))
    assert enhancer.networks(2, 0.0) == [(1.0, faithful)] and enhancer.networks(2, 1.0) == [(1.0, gan)]
    assert enhancer.networks(2, 0.51) == enhancer.networks(2, 0.5) == [(0.5, faithful), (0.5, gan)]  # 0.05 steps
    assert enhancer.networks(4, 0.5) != enhancer.networks(2, 0.5)


def test_the_input_kind_picks_the_jpeg_and_real_world_networks(tmp_path):
    """clean -> faithful + gan; JPEG-compressed and sharp -> faithful_jpeg + gan; compressed and soft (blurred
    first) -> faithful_real + gan_real (each where the folder has it); `jpeg=` overrides the reading."""
    import io

    from superres.runtime.compression import input_kind
    from superres.training.export import export_untrained
    export_untrained(tmp_path, scales=(2,), jpeg_scales=(2,), real_scales=(2,), real_faithful_scales=(2,))
    enhancer = Enhancer(tmp_path, threads=2)
    nets = enhancer.card["networks"]["2"]
    assert nets["faithful_jpeg"] == "x2_faithful_jpeg.onnx" and nets["gan_real"] == "x2_gan_real.onnx"
    assert nets["faithful_real"] == "x2_faithful_real.onnx"
    clean = astronaut().resize((128, 128), Image.LANCZOS)

    def jpeg(img, q=40):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=q)
        return np.asarray(Image.open(buf).convert("RGB"))
    compressed = jpeg(clean)
    soft = jpeg(clean.filter(ImageFilter.GaussianBlur(1.5)))
    assert [input_kind(a) for a in (np.asarray(clean), compressed, soft)] == ["clean", "jpeg", "real"]
    assert enhancer.input_kind(compressed, 2) == "jpeg" and enhancer.input_kind(soft, 2) == "real"
    assert enhancer.input_kind(compressed, 2, jpeg=False) == "clean"
    assert enhancer.input_kind(soft, 2, jpeg=True) == "jpeg"
    (_, faithful), (_, gan) = enhancer.networks(2, 0.5)
    (_, jpeg_net), (_, gan_for_jpeg) = enhancer.networks(2, 0.5, "jpeg")
    (_, faithful_for_real), (_, real_gan) = enhancer.networks(2, 0.5, "real")
    assert gan_for_jpeg == gan and len({faithful, gan, jpeg_net, real_gan, faithful_for_real}) == 5
    assert enhancer.networks(2, 1.0, "real") == [(1.0, real_gan)] and enhancer.networks(2, 1.0, "jpeg") == [(1.0, gan)]
    assert enhancer.networks(2, 0.0, "real") == [(1.0, faithful_for_real)]
    with pytest.raises(ValueError, match="kind"):
        enhancer.networks(2, 0.5, "blurry")
    out = {j: enhancer.enhance_array(compressed, 2, strength=0.25, jpeg=j) for j in (None, True, False)}
    assert np.array_equal(out[None], out[True]) and not np.array_equal(out[True], out[False])   # detected
    clean_out = {j: enhancer.enhance_array(np.asarray(clean), 2, strength=0, jpeg=j) for j in (None, False)}
    assert np.array_equal(clean_out[None], clean_out[False])
    # a folder without the optional networks treats every input as clean
    export_untrained(tmp_path / "plain", scales=(2,))
    plain = Enhancer(tmp_path / "plain", threads=2)
    assert plain.input_kind(soft, 2) == "clean" and plain.networks(2, 0.5, "real") == plain.networks(2, 0.5)
    # one with only the real-world GAN keeps the general faithful network for real inputs
    export_untrained(tmp_path / "gan_only", scales=(2,), real_scales=(2,))
    gan_only = Enhancer(tmp_path / "gan_only", threads=2)
    assert gan_only.networks(2, 0.0, "real") == gan_only.networks(2, 0.0)


def test_bad_arguments(enhancer):
    img = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="scale"):
        enhancer.enhance(img, scale=3)
    with pytest.raises(ValueError, match="strength"):
        enhancer.enhance(img, scale=2, strength=1.5)


def test_alpha_grayscale_icc(enhancer):
    rgba = astronaut().resize((50, 40)).convert("RGBA")
    alpha = Image.linear_gradient("L").resize((50, 40))
    rgba.putalpha(alpha)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgba.info["icc_profile"] = icc
    out = enhancer.enhance(rgba, scale=4)
    assert out.mode == "RGBA" and out.size == (200, 160)
    big_alpha = np.asarray(out.getchannel("A")).astype(int)
    ref = np.asarray(alpha.resize((200, 160), Image.Resampling.BICUBIC)).astype(int)
    assert np.abs(big_alpha - ref).max() <= 1
    assert out.info["icc_profile"] == icc
    assert enhancer.enhance(rgba.convert("L"), scale=2).mode == "L"
    assert enhancer.enhance(rgba.convert("LA"), scale=2).mode == "LA"


def cheap_model_dir(dest) -> Path:
    """A model folder that keeps the contract (a blendable pair of ONNX generators per scale, card with sha256)
    but whose networks are a resize and a 3x3 convolution: fast enough to push 2000x2000 x4 through in seconds."""
    import hashlib
    from pathlib import Path

    import onnx
    from onnx import TensorProto, helper, numpy_helper
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    kernel = np.zeros((3, 3, 3, 3), np.float32)
    kernel[range(3), range(3), 1, 1] = 1.0
    networks = {str(s): {"faithful": f"x{s}_faithful.onnx", "gan": f"x{s}_gan.onnx"} for s in (2, 4)}
    for scale, entry in networks.items():
        for i, name in enumerate(entry.values()):
            graph = helper.make_graph(
                [helper.make_node("Resize", ["input", "", "scales"], ["up"], mode="cubic"),
                 helper.make_node("Conv", ["up", "w"], ["output"], pads=[1, 1, 1, 1])],
                "cheap", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
                [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "h2", "w2"])],
                [numpy_helper.from_array(np.array([1, 1, int(scale), int(scale)], np.float32), "scales"),
                 numpy_helper.from_array(kernel * (1 + 0.01 * i), "w")])
            onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), dest / name)
    files = [f for entry in networks.values() for f in entry.values()]
    card = {"name": "cheap-test-model", "format": 2, "networks": networks, "scales": [2, 4], "input_multiple": 32,
            "default_strength": 0.5, "sha256": {f: hashlib.sha256((dest / f).read_bytes()).hexdigest() for f in files}}
    (dest / "model_card.json").write_text(json.dumps(card))
    return dest


def test_memory_bounded_by_tile_not_image(tmp_path):
    """x4 of a 2000x2000 photo (tiling, assembly, PNG encoding) in a fresh process: peak RSS under 2 GB.

    The networks here are cheap stand-ins so that this runs in seconds; what one network run of the shipped
    size costs is bounded by MAX_NET_INPUT (test_auto_tile_bounds_network_input), and Code/Web_App/bench.py
    --big measures the shipped models on the same job."""
    model = cheap_model_dir(tmp_path / "model")
    script = textwrap.dedent(f"""
        import numpy as np
        from PIL import Image, ImageFilter
        from superres.evaluation.timing import peak_rss_mb     # VmHWM: ru_maxrss would carry pytest's peak over fork
        from superres.runtime.inference import Enhancer
        from superres.runtime.imaging import encode_png, load_image
        img = load_image({str(tmp_path / 'big.jpg')!r})
        before = peak_rss_mb()
        out = Enhancer({str(model)!r}).enhance(img, scale=4)
        assert out.size == (8000, 8000), out.size
        png = encode_png(out, compress_level=1)
        print(before, peak_rss_mb())
    """)
    grace_hopper().resize((2000, 2000)).save(tmp_path / "big.jpg", quality=90)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    before_mb, peak_mb = (float(v) for v in res.stdout.split()[-2:])
    print(f"peak RSS for x4 of 2000x2000 (cheap networks): {peak_mb:.0f} MB (after loading: {before_mb:.0f} MB)")
    assert peak_mb < 2048
    # the 8000x8000 result is 192 MB as an array and 256 MB as a PIL image; the rest must be small
    assert peak_mb - before_mb < 192 + 256 + 400


def test_a_blend_runs_its_two_networks_side_by_side_with_the_same_result(untrained_model_dir):
    """With two or more threads a blend of a small image runs its networks at once, each on half the threads
    (`_paired`); a larger one (over PAIR_MAX_PIXELS, or more than one tile) runs them in turn. Both give what
    one thread gives."""
    from superres.runtime.inference import PAIR_MAX_PIXELS
    side_by_side, in_turn = Enhancer(untrained_model_dir, threads=2), Enhancer(untrained_model_dir, threads=1)
    assert in_turn._pool is None and not side_by_side._paired     # opened at the first side-by-side blend
    submitted = []
    submit = side_by_side._pool.submit
    side_by_side._pool.submit = lambda *a, **k: submitted.append(a) or submit(*a, **k)
    small, large = (np.asarray(astronaut().resize(size)) for size in ((96, 80), (288, 288)))
    assert 96 * 80 <= PAIR_MAX_PIXELS < 288 * 288
    for rgb, s, tile, runs in ((small, 0.0, 0, 0), (small, 0.4, 0, 1), (small, 1.0, 0, 0), (large, 0.6, 0, 0),
                               (small, 0.6, 32, 0)):
        a, b = (e.enhance_array(rgb, 2, strength=s, tile=tile).astype(int) for e in (side_by_side, in_turn))
        assert np.abs(a - b).max() <= 1 and len(submitted) == runs, (rgb.shape, s)
        submitted.clear()
    assert len(side_by_side._paired) == 2 and not in_turn._paired   # x2's faithful and GAN networks
