"""Reading and writing images for `enhance` and the web app (torch-free: Pillow + numpy).

`load_image` turns whatever a user hands us into one of four modes the enhancer understands:
    RGB, RGBA (alpha kept), L, LA (grayscale kept as grayscale)
with EXIF orientation applied, palettes/CMYK/16-bit/float converted, the first frame of an animation,
and the ICC profile kept in `image.info["icc_profile"]` when it still describes the pixels.

Every failure a user can cause raises an `ImageError` subclass whose message is plain words and whose
`status` is the HTTP status the web app answers with.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

# Formats we read; anything else is refused before decoding. EXTENSIONS: the image files that enhance,
# training (image_files) and evaluation (the portrait set) pick up from a folder.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".jfif", ".webp", ".gif", ".bmp", ".tif", ".tiff")
# Pillow's own decompression-bomb guard stays on; this is our (usually lower) limit on top of it.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def image_files(folder) -> list[Path]:
    """The image files under `folder` (recursively), sorted; an error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(EXTENSIONS)}) in {folder}")
    return files


class ImageError(ValueError):
    """A problem with the user's image; `str(e)` is fit to show to the user."""
    status = 400


class UnsupportedImage(ImageError):
    status = 415


class ImageTooLarge(ImageError):
    status = 413


def _open(source) -> Image.Image:
    """Open lazily (header only) from bytes, a path or a file object."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("The file is empty.")
        fp = io.BytesIO(source)
    elif isinstance(source, (str, Path)):
        fp = Path(source)
        if fp.stat().st_size == 0:
            raise ImageError("The file is empty.")
    else:
        fp = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(fp, formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge("The image has far too many megapixels to process safely "
                            "(it may be a decompression bomb).") from e
    except UnidentifiedImageError as e:
        raise UnsupportedImage("This file is not an image we can read. Use PNG, JPEG, WebP, GIF, BMP or TIFF.") from e
    except OSError as e:  # e.g. a header that starts right but is cut short
        raise ImageError("The image file is damaged or incomplete.") from e


def probe(source, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Check format and pixel count from the header only (cheap); returns the (width, height) after EXIF rotation."""
    with _open(source) as img:
        _check_pixels(img, max_pixels)
        w, h = img.size
        if _orientation(img) in (5, 6, 7, 8):
            w, h = h, w
        return w, h


def load_image(source, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `source` (bytes, path or file object) into an RGB, RGBA, L or LA image.

    Raises ImageTooLarge if it has more than `max_pixels` pixels (checked before decoding)."""
    img = _open(source)
    try:
        _check_pixels(img, max_pixels)
        img.seek(0)                       # first frame of GIF/WebP/TIFF animations
        img.load()
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError("The image file is damaged or incomplete.") from e
    icc = img.info.get("icc_profile")
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:                     # a broken EXIF block is not worth refusing the image for
        pass
    out = _normalise_mode(img, icc)
    if out is not img:
        img.close()
    return out


def _check_pixels(img: Image.Image, max_pixels: int):
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError("The image has no pixels.")
    if w * h > max_pixels:
        raise ImageTooLarge(f"The image is {w}×{h} = {w * h / 1e6:.1f} megapixels; "
                            f"the limit is {max_pixels / 1e6:.1f} megapixels.")


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation, from the header only: a PNG whose eXIf chunk is not before the pixels counts as 1
    (Pillow's PNG `getexif` would decode the whole image to look for it; `load_image` still applies it)."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:
        return 1


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """High bit-depth or float samples to 8 bits (rounded)."""
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float64))
        scale = 1.0 if a.max(initial=0) <= 1.0 else 255.0   # float images are either [0,1] or [0,255]
        return np.clip(np.rint(a / scale * 255), 0, 255).astype(np.uint8)
    top = 65535.0 if a.max(initial=0) > 255 or a.dtype.itemsize >= 2 else 255.0
    return np.clip(np.rint(a.astype(np.float64) / top * 255), 0, 255).astype(np.uint8)


def _normalise_mode(img: Image.Image, icc: bytes | None) -> Image.Image:
    mode = img.mode
    if mode in ("RGB", "RGBA", "L", "LA"):
        out = img
    elif mode == "1":
        out = img.convert("L")
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        out = img.convert("RGBA" if has_alpha else "RGB")
    elif mode == "CMYK":
        out, icc = _cmyk_to_rgb(img, icc), None
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        out = Image.fromarray(_to_uint8(np.asarray(img)), "L")
    elif mode in ("RGBa", "La"):
        out = img.convert("RGBA" if mode == "RGBa" else "LA")
    elif mode in ("RGBX", "YCbCr", "LAB", "HSV"):
        out = img.convert("RGB")
    else:
        out = img.convert("RGBA" if "A" in mode else "RGB")
    # keep the profile only where it still describes the pixels (an RGB profile on RGB, gray on gray)
    if icc:
        icc = icc if _icc_matches(icc, out.mode) else None
    info = {"icc_profile": icc} if icc else {}
    if out is img:
        img.info = info
    else:
        out.info = info
    return out


def _icc_matches(icc: bytes, mode: str) -> bool:
    try:
        prof = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        colour_space = prof.profile.xcolor_space.strip()
    except Exception:
        return False
    return colour_space == ("GRAY" if mode in ("L", "LA") else "RGB")


def _cmyk_to_rgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """Use the embedded CMYK profile when there is one (to sRGB); otherwise Pillow's naive conversion."""
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:
            pass
    return img.convert("RGB")


# Result formats of the web app: name -> (Pillow format, media type, file extension). PNG is the default.
OUTPUT_FORMATS = {"png": ("PNG", "image/png", "png"), "webp": ("WEBP", "image/webp", "webp"),
                  "jpeg": ("JPEG", "image/jpeg", "jpg")}


def save_options(fmt: str, quality: int | None = None) -> dict:
    """Pillow options for a Pillow format name: WebP is lossless unless a quality (1-100) is given; JPEG takes
    a quality (default 95); the others (PNG: always lossless) take none."""
    fmt = fmt.upper()
    if fmt == "WEBP":
        return {"lossless": True} if quality is None else {"quality": int(quality)}
    if fmt == "JPEG":
        return {"quality": int(quality or 95)}
    return {}


def encode(img: Image.Image, fmt: str = "png", quality: int | None = None) -> bytes:
    """`img` as bytes in one of OUTPUT_FORMATS, with the ICC profile; alpha kept except in JPEG (flattened on white)."""
    if fmt == "png":
        return encode_png(img)
    buf = io.BytesIO()
    pil_format = OUTPUT_FORMATS[fmt][0]
    save(img, buf, pil_format, **save_options(pil_format, quality))
    return buf.getvalue()


def encode_png(img: Image.Image, compress_level: int = 3) -> bytes:
    """PNG bytes with alpha and the ICC profile (if `img.info` has one)."""
    buf = io.BytesIO()
    save(img, buf, "PNG", compress_level=compress_level)
    return buf.getvalue()


def save(img: Image.Image, dest, fmt: str | None = None, **kwargs) -> None:
    """Save to a path or file object, keeping the ICC profile; formats without alpha get it flattened on white.

    A path is written atomically: to a hidden `.name.part` beside it, then renamed, so an interrupted save
    (Ctrl-C, a full disk) never leaves a broken file under the real name."""
    fmt = (fmt or Image.registered_extensions().get(Path(str(dest)).suffix.lower(), "PNG")).upper()
    icc = img.info.get("icc_profile")
    if icc:
        kwargs.setdefault("icc_profile", icc)
    if fmt == "JPEG":
        if img.mode in ("RGBA", "LA"):
            bg = Image.new(img.mode[:-1], img.size, 255)
            bg.paste(img.convert(img.mode[:-1]), mask=img.getchannel("A"))
            img = bg
        kwargs.setdefault("quality", 95)
    if not isinstance(dest, (str, os.PathLike)):
        img.save(dest, fmt, **kwargs)
        return
    dest = Path(dest)
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        img.save(part, fmt, **kwargs)
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
