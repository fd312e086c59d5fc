"""What the web app accepts: an upload checked into a `Job` before it waits for a worker (torch-free, and free of
the web framework: Web_App/app.py reads the request with Starlette and hands the pieces here).

The checks, in the order a request meets them: its declared length and type, its body's size and pace while it
arrives (`limited_receive`), its form fields, then its image: format and pixels from the header (`probe`) and what
the result and the work would cost (`check_size`). `s` is the web app's `Settings`; its limits are read here.

Every refusal is an `UploadError` whose message is fit for the user and whose `status` is the HTTP status the web
app answers with; `close` says the connection should not be reused (its body may be left half read).
"""
from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

from superres.runtime.imaging import OUTPUT_FORMATS, ImageError, ImageTooLarge, probe
from superres.runtime.jobs import Job

if TYPE_CHECKING:   # only named in annotations
    from superres.runtime.inference import Enhancer

FORM_SLACK = 64 * 1024          # what the multipart boundaries and the other fields may add to the file's size
# Padding to the network's multiple and the context around tiles make an ordinary photo cost up to ~1.2x the work
# of a square one with as many pixels; a thin strip costs tens of times more. The line is drawn between them.
WORK_ALLOWANCE = 2.0


class UploadError(Exception):
    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.close = status, close


def _too_big(s, close: bool = True) -> UploadError:
    return UploadError(413, f"The upload is larger than the {s.max_upload_mb:g} MB limit.", close)


def check_headers(headers, s) -> None:
    """Refuse, from the request's headers alone, a body declared too large or one that is not a multipart form."""
    length = headers.get("content-length")
    if length and length.isdigit() and int(length) > s.max_upload_bytes + FORM_SLACK:
        raise _too_big(s)
    if not headers.get("content-type", "").startswith("multipart/form-data"):
        raise UploadError(400, "Send the image as multipart/form-data with a field named 'file'.")


def limited_receive(receive, s):
    """Wrap ASGI `receive`: a body over the upload limit is refused (413), and so is one that sends nothing for
    UPLOAD_TIMEOUT_S (408)."""
    seen = 0

    async def wrapped():
        nonlocal seen
        try:
            message = await asyncio.wait_for(receive(), s.upload_timeout_s)
        except TimeoutError:
            raise UploadError(408, f"The upload stalled (nothing arrived for {s.upload_timeout_s:g} s).",
                              close=True) from None
        seen += len(message.get("body", b""))
        if seen > s.max_upload_bytes + FORM_SLACK:
            raise _too_big(s)
        return message
    return wrapped


def _field(form, name: str, default, convert, message: str):
    raw = form.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    if not isinstance(raw, str):
        raise UploadError(400, message)
    try:
        return convert(raw.strip())
    except ValueError:
        raise UploadError(400, message) from None


def check_size(enhancer: Enhancer, s, w: int, h: int, scale: int) -> None:
    """Refuse images whose result or whose work (padded, tiled) is over the limits, stating the limit: an image
    may cost at most WORK_ALLOWANCE times the work of the largest square image MAX_INPUT_MP allows."""
    if w * h * scale * scale > s.max_output_mp * 1e6:
        raise ImageTooLarge(
            f"The result would be {w * scale}×{h * scale} = {w * h * scale * scale / 1e6:.1f} megapixels; "
            f"the limit is {s.max_output_mp:g} megapixels. Choose ×2 or a smaller image.")
    side = int(math.sqrt(s.max_input_mp * 1e6))
    work = enhancer.work(w, h, s.tile)
    if work > WORK_ALLOWANCE * enhancer.work(side, side, s.tile):
        raise ImageTooLarge(
            f"The image is {w}×{h} pixels: so thin that, padded and cut into tiles, it is as much work as a "
            f"{work / 1e6:.0f}-megapixel image; the limit is {s.max_input_mp:g} megapixels.")


def check_job(form, data: bytes, filename: str | None, enhancer: Enhancer, s) -> Job:
    """The Job for an uploaded image `data` and the form's other fields (scale, strength, format, quality; each
    optional), once they and the image are within the limits."""
    scale = _field(form, "scale", 4, int, "scale must be 2 or 4.")
    strength = _field(form, "strength", enhancer.default_strength, float, "strength must be a number between 0 and 1.")
    fmt = _field(form, "format", "png", str.lower, "format must be png, webp or jpeg.")
    fmt = {"jpg": "jpeg"}.get(fmt, fmt)
    quality = _field(form, "quality", None, int, "quality must be a whole number from 1 to 100.")
    if scale not in enhancer.scales:
        raise UploadError(400, "scale must be " + " or ".join(map(str, enhancer.scales)) + ".")
    if not 0.0 <= strength <= 1.0:                    # also refuses NaN
        raise UploadError(400, "strength must be a number between 0 and 1.")
    if fmt not in OUTPUT_FORMATS:
        raise UploadError(400, "format must be " + ", ".join(OUTPUT_FORMATS) + ".")
    if quality is not None and not 1 <= quality <= 100:
        raise UploadError(400, "quality must be a whole number from 1 to 100.")
    if len(data) > s.max_upload_bytes:
        raise _too_big(s, close=False)                # the body was read to its end
    try:
        w, h = probe(data, int(s.max_input_mp * 1e6))  # header only: cheap, so bad files never wait in the queue
        check_size(enhancer, s, w, h, scale)
    except ImageError as e:
        raise UploadError(e.status, str(e)) from None
    return Job(data, scale, strength, filename or "image", fmt, quality)
