"""superres.runtime.imaging: every odd input a user may hand us, converted sensibly or refused in plain words."""
import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from conftest import astronaut
from superres.runtime.imaging import ImageError, ImageTooLarge, UnsupportedImage, encode_png, load_image, probe


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def small_rgb(w=40, h=30) -> Image.Image:
    return astronaut().resize((w, h))


def bomb_png(width=100_000, height=100_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (Pillow's decompression-bomb guard case)."""
    png = bytearray(_bytes(Image.new("L", (8, 8)), "PNG"))
    ihdr = 8 + 8                              # signature, then length + "IHDR"
    png[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    png[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(png[ihdr - 4:ihdr + 13]))
    return bytes(png)


def exif_rotated_jpeg() -> bytes:
    """A 40x30 JPEG stored sideways with EXIF orientation 6 (rotate 90° clockwise to display)."""
    img = small_rgb(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _bytes(img, "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (20, 10), c) for c in ("red", "green", "blue")]
    return _bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def palette_with_transparency() -> bytes:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (0, 0, 8, 16))
    return _bytes(img, "PNG", transparency=1)


def cmyk_jpeg() -> bytes:
    return _bytes(small_rgb().convert("CMYK"), "JPEG")


def gray16_png() -> bytes:
    a = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    return _bytes(Image.fromarray(a), "PNG")


def rgb16_tiff() -> bytes:
    import tifffile
    buf = io.BytesIO()
    tifffile.imwrite(buf, (np.asarray(small_rgb()).astype(np.uint16) * 257))
    return buf.getvalue()


def truncated_png() -> bytes:
    data = _bytes(small_rgb(200, 200), "PNG")
    return data[: len(data) // 2]


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "hello")
    return buf.getvalue()


# (name, bytes factory, expected mode or exception, expected size)
CASES = [
    ("png_rgb", lambda: _bytes(small_rgb(), "PNG"), "RGB", (40, 30)),
    ("jpeg", lambda: _bytes(small_rgb(), "JPEG"), "RGB", (40, 30)),
    ("webp", lambda: _bytes(small_rgb(), "WEBP"), "RGB", (40, 30)),
    ("bmp", lambda: _bytes(small_rgb(), "BMP"), "RGB", (40, 30)),
    ("tiff", lambda: _bytes(small_rgb(), "TIFF"), "RGB", (40, 30)),
    ("rgba", lambda: _bytes(small_rgb().convert("RGBA"), "PNG"), "RGBA", (40, 30)),
    ("gray", lambda: _bytes(small_rgb().convert("L"), "PNG"), "L", (40, 30)),
    ("gray_alpha", lambda: _bytes(small_rgb().convert("LA"), "PNG"), "LA", (40, 30)),
    ("bilevel", lambda: _bytes(small_rgb().convert("1"), "PNG"), "L", (40, 30)),
    ("palette", lambda: _bytes(small_rgb().convert("P"), "PNG"), "RGB", (40, 30)),
    ("palette_transparent", palette_with_transparency, "RGBA", (16, 16)),
    ("cmyk_jpeg", cmyk_jpeg, "RGB", (40, 30)),
    ("gray16", gray16_png, "L", (64, 8)),
    ("rgb16_tiff", rgb16_tiff, "RGB", (40, 30)),
    ("exif_rotated", exif_rotated_jpeg, "RGB", (30, 40)),
    ("animated_gif", animated_gif, "RGB", (20, 10)),
    ("empty", lambda: b"", ImageError, None),
    ("text", lambda: b"hello, this is not an image\n" * 10, UnsupportedImage, None),
    ("html", lambda: b"<!doctype html><html><body><img src=x></body></html>", UnsupportedImage, None),
    ("zip", zip_bytes, UnsupportedImage, None),
    ("truncated", truncated_png, ImageError, None),
    ("bomb", bomb_png, ImageTooLarge, None),
    ("ico", lambda: _bytes(small_rgb(), "ICO"), UnsupportedImage, None),
]


@pytest.mark.parametrize("name,make,expected,size", CASES, ids=[c[0] for c in CASES])
def test_load_table(name, make, expected, size):
    data = make()
    if isinstance(expected, type) and issubclass(expected, Exception):
        with pytest.raises(expected) as info:
            load_image(data)
        message = str(info.value)
        assert message and "Traceback" not in message and len(message) < 300
        assert info.value.status in (400, 413, 415)
        return
    img = load_image(data)
    assert img.mode == expected
    assert img.size == size


def test_exif_rotation_moves_pixels():
    data = exif_rotated_jpeg()
    img = load_image(data)
    ref = Image.open(io.BytesIO(data)).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(img), np.asarray(ref))
    assert probe(exif_rotated_jpeg()) == (30, 40)


def test_animated_gif_first_frame_is_red():
    r, g, b = load_image(animated_gif()).getpixel((5, 5))
    assert r > 200 and g < 50 and b < 50


def test_palette_transparency_kept():
    img = load_image(palette_with_transparency())
    assert img.getpixel((2, 2))[3] == 0              # index 1: transparent
    assert img.getpixel((12, 2)) == (255, 0, 0, 255)


def test_sixteen_bit_scaled_not_clipped():
    a = np.asarray(load_image(gray16_png()))
    assert a.dtype == np.uint8 and a[0, 0] == 0 and a[0, -1] == 255 and 100 < a[0, 32] < 160


def test_cmyk_colours_survive():
    src = np.asarray(small_rgb()).astype(int)
    out = np.asarray(load_image(cmyk_jpeg())).astype(int)
    assert np.abs(src - out).mean() < 25


def test_icc_profile_kept_and_written():
    icc = srgb_icc()
    img = load_image(_bytes(small_rgb(), "PNG", icc_profile=icc))
    assert img.info.get("icc_profile") == icc
    again = Image.open(io.BytesIO(encode_png(img)))
    assert again.info.get("icc_profile") == icc


def test_cmyk_profile_not_kept_on_rgb():
    img = load_image(cmyk_jpeg())
    assert "icc_profile" not in img.info


def test_png_keeps_alpha():
    rgba = small_rgb().convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    out = Image.open(io.BytesIO(encode_png(load_image(_bytes(rgba, "PNG")))))
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out), np.asarray(rgba))


def test_max_pixels_checked_before_decoding():
    data = _bytes(small_rgb(400, 300), "PNG")
    with pytest.raises(ImageTooLarge, match="megapixels"):
        load_image(data, max_pixels=100_000)
    with pytest.raises(ImageTooLarge):
        probe(data, max_pixels=100_000)
    assert load_image(data, max_pixels=120_000).size == (400, 300)


def test_load_from_path(tmp_path):
    p = tmp_path / "a.jpg"
    small_rgb().save(p)
    assert load_image(p).size == (40, 30)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "empty.png")


def test_probe_reads_the_header_only():
    """A PNG's pixels are not decoded by the probe (Pillow's PNG getexif would decode them, on the event
    loop): a PNG cut off in its pixel data still probes, while loading it says it is damaged."""
    data = truncated_png()
    assert probe(data) == (200, 200)
    with pytest.raises(ImageError, match="damaged"):
        load_image(data)


def test_saving_to_a_path_is_atomic(tmp_path):
    """A save that fails half-way leaves neither a broken file under the real name nor its temporary file."""
    from superres.runtime.imaging import save
    dest = tmp_path / "out.png"
    save(small_rgb(), dest)
    before = dest.read_bytes()
    with pytest.raises(OSError):
        save(small_rgb(), dest, "PNG", compress_level=99)     # Pillow refuses the level after opening the file
    assert dest.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
