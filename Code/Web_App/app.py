"""The web app: a select-and-enhance page and its API (Starlette + Jinja2, served by uvicorn).

Routes (the whole table is `ROUTES` below):
    GET  /              the page
    POST /api/enhance   multipart: file, scale (2|4, default 4), strength (0..1) -> image/png
    GET  /healthz       JSON: status, models loaded, version, queue
    /static/...         CSS and JS

Start it with `python -m superres serve` (or `docker run -p 5000:5000 srwebapp`). Settings come from the
environment (see `Settings`). Inference runs in a thread pool of WORKERS threads off the event loop; at most
QUEUE more requests wait, beyond that the answer is 429. Bad input always gets a 4xx JSON {"error": "..."}.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from superres import DEFAULT_MODEL_DIR, __version__
from superres.imaging import ImageError, ImageTooLarge, encode_png, load_image, probe
from superres.inference import Enhancer, ModelError, verify_model_dir

HERE = Path(__file__).resolve().parent
log = logging.getLogger("superres.webapp")


# ---- settings ------------------------------------------------------------------------------------------
@dataclass
class Settings:
    """Everything configurable, read from the environment by `from_env` (names in capitals)."""
    model_dir: Path = DEFAULT_MODEL_DIR   # MODEL_DIR: the model folder (ONNX generators + model_card.json)
    model_url: str = ""                   # MODEL_URL: fetch a .zip/.tar.gz model folder at start-up instead
    model_sha256: str = ""                # MODEL_SHA256: optional checksum of that archive
    model_cache: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "superres-models")  # MODEL_CACHE
    max_upload_mb: float = 20.0           # MAX_UPLOAD_MB: largest upload
    max_input_mp: float = 16.0            # MAX_INPUT_MP: largest input image, megapixels
    max_output_mp: float = 64.0           # MAX_OUTPUT_MP: largest result, megapixels (x4 of 2000x2000 = 64)
    workers: int = 1                      # WORKERS: images enhanced at the same time
    queue: int = 16                       # QUEUE: requests that may wait for a worker; more get 429
    threads: int = 0                      # THREADS: ONNX Runtime threads per worker (0 = all cores)
    tile: int | None = None               # TILE: tile size in input pixels (unset = automatic)

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        env = os.environ if env is None else env
        s = cls()
        conv = {"MODEL_DIR": ("model_dir", Path), "MODEL_URL": ("model_url", str),
                "MODEL_SHA256": ("model_sha256", str), "MODEL_CACHE": ("model_cache", Path),
                "MAX_UPLOAD_MB": ("max_upload_mb", float), "MAX_INPUT_MP": ("max_input_mp", float),
                "MAX_OUTPUT_MP": ("max_output_mp", float), "WORKERS": ("workers", int),
                "QUEUE": ("queue", int), "THREADS": ("threads", int), "TILE": ("tile", int)}
        for name, (attr, typ) in conv.items():
            raw = env.get(name, "").strip()
            if not raw:
                continue
            try:
                setattr(s, attr, typ(raw))
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a valid {typ.__name__}") from None
        if s.workers < 1 or s.queue < 0 or min(s.max_upload_mb, s.max_input_mp, s.max_output_mp) <= 0:
            raise ValueError("WORKERS must be >= 1, QUEUE >= 0 and the MAX_* limits > 0")
        return s

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


# ---- models: a local folder, or an archive fetched at start-up (as fastai's deploy template did) ---------
async def load_models(settings: Settings) -> Enhancer:
    """Fetch (if MODEL_URL) and load the models; raises ModelError with a message fit for the console."""
    model_dir = settings.model_dir
    if settings.model_url:
        model_dir = await fetch_model(settings.model_url, settings.model_cache, settings.model_sha256)
    return await asyncio.to_thread(Enhancer, model_dir, threads=settings.threads)


async def fetch_model(url: str, cache: Path, sha256: str = "") -> Path:
    """Download a .zip or .tar(.gz) holding a model folder, unpack it under `cache`, check it against its card."""
    import aiohttp
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / "download.part"
    digest = hashlib.sha256()
    log.info("fetching the model archive %s", url)
    try:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(url) as resp:
                if resp.status != 200:
                    raise ModelError(f"Could not download the model archive from {url}: HTTP {resp.status} {resp.reason}.")
                with open(archive, "wb") as f:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        digest.update(chunk)
                        f.write(chunk)
    except aiohttp.ClientError as e:
        raise ModelError(f"Could not download the model archive from {url} ({e.__class__.__name__}: {e}).") from e
    if sha256 and digest.hexdigest() != sha256.lower():
        raise ModelError(f"The model archive from {url} has sha256 {digest.hexdigest()}, not MODEL_SHA256={sha256}.")
    dest = cache / hashlib.sha256(url.encode()).hexdigest()[:16]
    tmp = Path(tempfile.mkdtemp(dir=cache))
    try:
        _unpack(archive, tmp)
        cards = list(tmp.glob("model_card.json")) + list(tmp.glob("*/model_card.json"))
        if len(cards) != 1:
            raise ModelError(f"The archive from {url} does not hold one model folder (model_card.json + ONNX files).")
        verify_model_dir(cards[0].parent)
        shutil.rmtree(dest, ignore_errors=True)
        cards[0].parent.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        archive.unlink(missing_ok=True)
    log.info("model archive unpacked to %s and checked against its card", dest)
    return dest


def _unpack(archive: Path, dest: Path) -> None:
    """Unpack a zip or tar archive, refusing members that would land outside `dest`."""
    def safe(name: str) -> str:
        p = Path(name)
        if p.is_absolute() or ".." in p.parts:
            raise ModelError(f"The model archive has an unsafe member path {name!r}.")
        return name
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                safe(name)
            z.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            members = [m for m in t.getmembers() if (m.isfile() or m.isdir()) and safe(m.name)]
            t.extractall(dest, members=members, filter="data")
    else:
        raise ModelError("The model archive is neither a zip nor a tar file.")


# ---- the worker pool ---------------------------------------------------------------------------------------
class Busy(Exception):
    pass


class Pool:
    """WORKERS threads run jobs off the event loop; at most WORKERS + QUEUE jobs are admitted at a time."""

    def __init__(self, workers: int, queue: int):
        self.workers, self.capacity = workers, workers + queue
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="enhance")
        self.admitted = 0          # running + waiting; changed only on the event loop
        self.running = 0
        self._lock = threading.Lock()

    async def run(self, fn, *args):
        if self.admitted >= self.capacity:
            raise Busy()
        self.admitted += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, self._call, fn, args)
        finally:
            self.admitted -= 1

    def _call(self, fn, args):
        with self._lock:
            self.running += 1
        try:
            return fn(*args)
        finally:
            with self._lock:
                self.running -= 1

    def shutdown(self):
        self.executor.shutdown(wait=False, cancel_futures=True)


# ---- endpoints ------------------------------------------------------------------------------------------
templates = Jinja2Templates(directory=HERE / "templates")


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def index(request: Request):
    st = request.app.state
    card = st.enhancer.card if st.enhancer else {}
    s: Settings = st.settings
    return templates.TemplateResponse(request, "index.html", {
        "version": __version__,
        "untrained": bool(card.get("untrained")),
        "default_strength": st.enhancer.default_strength if st.enhancer else 0.5,
        "max_upload_mb": s.max_upload_mb, "max_input_mp": s.max_input_mp, "max_output_mp": s.max_output_mp,
    })


async def healthz(request: Request):
    st = request.app.state
    card = st.enhancer.card if st.enhancer else {}
    pool: Pool | None = st.pool
    return JSONResponse({
        "status": "ok" if st.enhancer else "loading",
        "models_loaded": st.enhancer is not None,
        "model": {"name": card.get("name"), "created": card.get("created"), "untrained": bool(card.get("untrained")),
                  "scales": st.enhancer.scales if st.enhancer else [],
                  "default_strength": st.enhancer.default_strength if st.enhancer else None},
        "version": __version__,
        "workers": pool.workers if pool else 0,
        "running": pool.running if pool else 0,
        "waiting": max(0, pool.admitted - pool.running) if pool else 0,
        "capacity": pool.capacity if pool else 0,
    })


class UploadTooLarge(Exception):
    pass


def _limited(receive, limit: int):
    """Wrap ASGI `receive` so that reading more than `limit` body bytes raises UploadTooLarge."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise UploadTooLarge()
        return message
    return wrapped


def _field(form, name: str, default, convert, message: str):
    raw = form.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    if not isinstance(raw, str):
        raise HTTPException(400, message)
    try:
        value = convert(raw.strip())
    except ValueError:
        raise HTTPException(400, message) from None
    return value


async def enhance(request: Request):
    st = request.app.state
    s: Settings = st.settings
    enhancer: Enhancer | None = st.enhancer
    if enhancer is None:
        return error(503, "The models are still loading; try again in a moment.")
    too_big = f"The upload is larger than the {s.max_upload_mb:g} MB limit."
    slack = 64 * 1024                                  # multipart boundaries and the other fields
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > s.max_upload_bytes + slack:
        return error(413, too_big, {"Connection": "close"})
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return error(400, "Send the image as multipart/form-data with a field named 'file'.")
    request = Request(request.scope, _limited(request.receive, s.max_upload_bytes + slack))
    try:
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, "No image received: send it in a form field named 'file'.")
            scale = _field(form, "scale", 4, int, "scale must be 2 or 4.")
            strength = _field(form, "strength", enhancer.default_strength, float,
                              "strength must be a number between 0 and 1.")
            filename = upload.filename or "image"
            data = await upload.read()
    except UploadTooLarge:
        return error(413, too_big, {"Connection": "close"})
    if scale not in enhancer.scales:
        return error(400, "scale must be " + " or ".join(map(str, enhancer.scales)) + ".")
    if not 0.0 <= strength <= 1.0:                    # also refuses NaN
        return error(400, "strength must be a number between 0 and 1.")
    if len(data) > s.max_upload_bytes:
        return error(413, too_big)
    max_in = int(s.max_input_mp * 1e6)
    try:
        w, h = probe(data, max_in)                     # header only: cheap, so bad files never wait in the queue
        if w * h * scale * scale > s.max_output_mp * 1e6:
            raise ImageTooLarge(
                f"The result would be {w * scale}×{h * scale} = {w * h * scale * scale / 1e6:.1f} megapixels; "
                f"the limit is {s.max_output_mp:g} megapixels. Choose ×2 or a smaller image.")
    except ImageError as e:
        return error(e.status, str(e))

    def job():
        t0 = time.perf_counter()
        img = load_image(data, max_in)
        out = enhancer.enhance(img, scale=scale, strength=strength, tile=s.tile)
        png = encode_png(out)
        return png, img.size, out.size, time.perf_counter() - t0

    try:
        png, in_size, out_size, seconds = await st.pool.run(job)
    except Busy:
        return error(429, "The server is busy with other images; please try again in a minute.", {"Retry-After": "30"})
    except ImageError as e:
        return error(e.status, str(e))
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename).stem)[:80] or "image"
    return Response(png, media_type="image/png", headers={
        "Content-Disposition": f'inline; filename="{stem}_x{scale}.png"',
        "X-Input-Size": f"{in_size[0]}x{in_size[1]}",
        "X-Output-Size": f"{out_size[0]}x{out_size[1]}",
        "X-Strength": f"{Enhancer.round_strength(strength):.2f}",
        "X-Processing-Seconds": f"{seconds:.2f}",
    })


async def http_error(request: Request, exc: HTTPException):
    return error(exc.status_code, exc.detail if isinstance(exc.detail, str) else "Bad request.", exc.headers)


async def server_error(request: Request, exc: Exception):
    log.exception("unexpected error on %s", request.url.path)
    return error(500, "Something went wrong on the server while enhancing the image. Please try again.")


ROUTES = [
    Route("/", index, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/api/enhance", enhance, methods=["POST"]),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
]


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    st = app.state
    st.pool = Pool(st.settings.workers, st.settings.queue)
    if st.enhancer is None:
        st.enhancer = await load_models(st.settings)
    log.info("models loaded from %s (%s)", st.enhancer.model_dir, st.enhancer.card.get("name"))
    try:
        yield
    finally:
        st.pool.shutdown()


def create_app(settings: Settings | None = None, enhancer: Enhancer | None = None) -> Starlette:
    """The ASGI app. Pass an already loaded `enhancer` to skip loading at start-up (as `serve` does)."""
    app = Starlette(routes=ROUTES, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.settings = settings or Settings.from_env()
    app.state.enhancer = enhancer
    app.state.pool = None
    return app
