"""What a model folder is, in one place: its card, its files and their sha256, checking a folder against its
card, and fetching one as an archive (the web app's MODEL_URL). Torch-free; `export` writes such folders,
`inference` reads them, the web app fetches them.

A model folder holds, for each scale S it supports (4 and 2):
    xS_faithful.onnx   pre-GAN weights (strength 0)
    xS_gan.onnx        GAN weights (strength 1); "input" -> "output" x S like the faithful one, whose output
                       it is blended with for a strength between 0 and 1
    xS_faithful_jpeg.onnx  (optional) a faithful network trained on JPEG-compressed inputs only; it stands in
                       for xS_faithful when the input is JPEG-compressed but sharp
                       (`superres.runtime.compression.input_kind`)
    xS_faithful_real.onnx  (optional) a faithful network trained on the real-world chain
                       (superres.training.degradations); it stands in for xS_faithful when the input is compressed
                       and soft ("real")
    xS_gan_real.onnx   (optional) a GAN-side network trained on the real-world chain; it stands in for xS_gan on
                       "real" inputs
    model_card.json    what they are, how they were trained, how well they do, their sha256
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

CARD = "model_card.json"
FORMAT = 2                  # 1: x2 generator + x2 up-sampler chain; 2: one generator per scale
DEFAULT_STRENGTH = 0.25     # the card's default_strength as exported: mostly faithful, a little GAN detail
STAGES = ("generator", "critic", "gan", "polish")   # the training stages, in order, as the card's `stages` records them

log = logging.getLogger("superres.runtime.model_folder")


class ModelError(RuntimeError):
    """The model folder is missing, incomplete or does not match its card; `str(e)` says what to do."""


KINDS = ("faithful", "gan", "faithful_jpeg", "faithful_real", "gan_real")   # the networks a scale may have
COMPRESSED_KINDS = ("faithful_jpeg", "faithful_real", "gan_real")          # the optional ones, for compressed inputs


def has_compressed_networks(card: dict, scale: int) -> bool:
    """Whether the card's x`scale` networks include one for compressed inputs (so the input's kind matters)."""
    return any(kind in card["networks"].get(str(scale), {}) for kind in COMPRESSED_KINDS)


def network_files(scale: int, jpeg: bool = False, real: bool = False, real_faithful: bool = False) -> dict:
    """The card's `networks` entry for one scale: its faithful and GAN ONNX files (and the JPEG faithful one, the
    real-world GAN one, the real-world faithful one)."""
    optional = {"faithful_jpeg": jpeg, "gan_real": real, "faithful_real": real_faithful}
    return {kind: f"x{scale}_{kind}.onnx" for kind in KINDS if optional.get(kind, True)}


def model_files(card: dict) -> list[str]:
    """Every ONNX file the card names."""
    return [entry[k] for entry in card["networks"].values() for k in KINDS if k in entry]


def sha256(path) -> str:
    """The sha256 of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_card(model_dir) -> dict:
    model_dir = Path(model_dir)
    card_path = model_dir / CARD
    if not card_path.is_file():
        what = "does not exist" if not model_dir.exists() else f"has no {CARD}"
        raise ModelError(
            f"No model found: the model folder {model_dir} {what}. Export one with "
            "`python -m superres export` (or `--untrained` to try the pipeline), then point MODEL_DIR "
            "(web app) or --model-dir (enhance) at it.")
    try:
        card = json.loads(card_path.read_text())
        if card.get("format") != FORMAT:
            raise ModelError(f"The model card {card_path} has format {card.get('format')!r}; this version of "
                             f"superres reads format {FORMAT} (one generator per scale). Re-export the model.")
        for entry in card["networks"].values():
            entry["faithful"], entry["gan"]
        card["input_multiple"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(f"The model card {card_path} is not valid ({e!r}).") from e
    return card


def verify_model_dir(model_dir) -> dict:
    """Read the card and check that every file it names exists and has the sha256 the card records."""
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    for name in model_files(card):
        path = model_dir / name
        if not path.is_file():
            raise ModelError(f"The model folder {model_dir} lacks {name}, which its card lists.")
        want = card.get("sha256", {}).get(name)
        if not want:
            raise ModelError(f"The model card in {model_dir} records no sha256 for {name}.")
        got = sha256(path)
        if got != want:
            raise ModelError(f"{path} does not match its model card (sha256 {got[:12]}… "
                             f"instead of {want[:12]}…): the file is damaged or from another model.")
    return card


# ---- a model folder fetched as an archive (as fastai's deploy template did) -------------------------------
async def fetch_model(url: str, cache: Path, sha256_hex: str, max_bytes: int) -> Path:
    """Download a .zip or .tar(.gz) holding a model folder, unpack it under `cache`, check it against its card.

    The archive must have the sha256 given (or "skip"), and neither it nor its contents may exceed `max_bytes`.
    Temporary files get unique names in `cache`, which is created private (0700). The messages name the web
    app's settings (MODEL_SHA256, MODEL_MAX_MB), which is where these values come from."""
    import aiohttp
    if not sha256_hex:
        raise ModelError("MODEL_URL needs MODEL_SHA256, the archive's sha256 (e.g. from `sha256sum model.zip`), so "
                         "that the server runs the model you meant; MODEL_SHA256=skip runs it unchecked.")
    limit = f"the {max_bytes / 1024 / 1024:g} MB limit (MODEL_MAX_MB)"
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(dir=cache, suffix=".part")
    archive = Path(name)
    log.info("fetching the model archive %s", url)
    try:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        size = 0
        with os.fdopen(fd, "wb") as f:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
                if resp.status != 200:
                    raise ModelError(f"Could not download the model archive from {url}: "
                                     f"HTTP {resp.status} {resp.reason}.")
                if (resp.content_length or 0) > max_bytes:
                    raise ModelError(f"The model archive from {url} is {resp.content_length / 1e6:.0f} MB, "
                                     f"over {limit}.")
                async for chunk in resp.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > max_bytes:
                        raise ModelError(f"The model archive from {url} is larger than {limit}.")
                    f.write(chunk)
        got = sha256(archive)
        if sha256_hex.lower() != "skip" and got != sha256_hex.lower():
            raise ModelError(f"The model archive from {url} has sha256 {got}, not MODEL_SHA256={sha256_hex}.")
        dest = cache / hashlib.sha256(url.encode()).hexdigest()[:16]
        tmp = Path(tempfile.mkdtemp(dir=cache))
        try:
            unpack(archive, tmp, max_bytes, limit)
            cards = list(tmp.glob(CARD)) + list(tmp.glob(f"*/{CARD}"))
            if len(cards) != 1:
                raise ModelError(f"The archive from {url} does not hold one model folder ({CARD} + ONNX files).")
            verify_model_dir(cards[0].parent)
            shutil.rmtree(dest, ignore_errors=True)
            cards[0].parent.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except aiohttp.ClientError as e:
        raise ModelError(f"Could not download the model archive from {url} ({e.__class__.__name__}: {e}).") from e
    finally:
        archive.unlink(missing_ok=True)
    log.info("model archive unpacked to %s and checked against its card", dest)
    return dest


def unpack(archive: Path, dest: Path, max_bytes: int, limit: str) -> None:
    """Unpack a zip or tar archive, refusing members that would land outside `dest` and contents over `max_bytes`
    (`limit` words that bound for the message)."""
    def safe(name: str) -> str:
        p = Path(name)
        if p.is_absolute() or ".." in p.parts:
            raise ModelError(f"The model archive has an unsafe member path {name!r}.")
        return name

    def bounded(total: int):
        if total > max_bytes:
            raise ModelError(f"The model archive unpacks to {total / 1e6:.0f} MB, over {limit}.")
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                safe(name)
            bounded(sum(i.file_size for i in z.infolist()))
            z.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            members = [m for m in t.getmembers() if (m.isfile() or m.isdir()) and safe(m.name)]
            bounded(sum(m.size for m in members))
            t.extractall(dest, members=members, filter="data")
    else:
        raise ModelError("The model archive is neither a zip nor a tar file.")
