"""The web app: a select-and-enhance page and its API (Starlette + Jinja2, served by uvicorn).

Routes (the whole table is `ROUTES` below):
    GET    /                      the page
    POST   /api/enhance           multipart: file, scale (2|4, default 4), strength (0..1), format (png|webp|jpeg),
                                  quality (1..100; webp without it is lossless) -> the image
    POST   /api/jobs              the same fields -> 202 {"id", "status_url", "result_url"}
    GET    /api/jobs/{id}         {"state", "progress", "tiles_done", "tiles_total", "queue_position", "error"}
    GET    /api/jobs/{id}/result  the image (409 until the job is done)
    DELETE /api/jobs/{id}         cancel (the job stops at its next tile) or, once finished, forget it
    GET    /healthz               JSON: status, models loaded, version, queue (workers, running, waiting)
    /static/..., /favicon.ico     CSS, JS, icons

Start it with `python -m superres serve` (or `docker run -p 5000:5000 srwebapp`), which loads this file by its
path as the module `superres_webapp` and uses `Settings`, `load_models` and `create_app` (see superres.runtime.serve).
Settings come from the environment (see `Settings`). Every image is a `Job` in a job store (superres.runtime.jobs): by
default `Jobs`, WORKERS threads off the event loop; with REDIS_URL, `RedisJobs` (superres.runtime.redis_jobs), a queue
on Redis that `python -m superres worker` processes take jobs from, so that any web process can answer for any job
(Redis unreachable: 503 with Retry-After). At most QUEUE jobs wait (beyond that 429, decided before the upload is read).
An upload is checked into a job (size, pace, fields, image) by superres.runtime.upload before it waits. A job stops at
its next tile when it is cancelled (DELETE, or the client of /api/enhance hung up) or passes JOB_TIMEOUT_S. What an
image costs is the network's padded, tiled input (`Enhancer.work`), not width x height, so thin strips cannot stall the
worker. Finished jobs are kept JOB_TTL_S for their clients, their results at most MAX_RESULTS_MB together (the oldest go
first). Bad input always gets a 4xx JSON {"error": "..."}; every response carries SECURITY_HEADERS.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from superres import DEFAULT_MODEL_DIR, __version__
from superres.runtime import upload
from superres.runtime.imaging import OUTPUT_FORMATS
from superres.runtime.inference import Enhancer
from superres.runtime.jobs import Busy, Job, Jobs, Unavailable
from superres.runtime.model_folder import fetch_model

HERE = Path(__file__).resolve().parent
log = logging.getLogger("superres.webapp")


# ---- settings ------------------------------------------------------------------------------------------
def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "superres" / "models"


@dataclass
class Settings:
    """Everything configurable, read from the environment by `from_env`: each field's name in capitals."""
    model_dir: Path = DEFAULT_MODEL_DIR   # the model folder (ONNX generators + model_card.json)
    model_url: str = ""                   # fetch a .zip/.tar.gz model folder at start-up instead
    model_sha256: str = ""                # that archive's sha256; required with MODEL_URL ("skip": no check)
    model_max_mb: float = 1024.0          # largest model archive, downloaded and unpacked
    model_cache: Path = field(default_factory=_cache_dir)   # where it is unpacked (private to this user)
    max_upload_mb: float = 20.0           # largest upload
    max_input_mp: float = 16.0            # largest input image, megapixels (also bounds its padded, tiled work)
    max_output_mp: float = 64.0           # largest result, megapixels (x4 of 2000x2000 = 64)
    workers: int = 1                      # images enhanced at the same time
    queue: int = 16                       # requests that may wait for a worker; more get 429
    threads: int = 0                      # ONNX Runtime threads per worker (0 = all cores)
    tile: int | None = None               # tile size in input pixels (unset = automatic)
    job_timeout_s: float = 300.0          # a job running longer stops at its next tile
    upload_timeout_s: float = 30.0        # an upload that sends nothing for this long is dropped (408)
    max_connections: int = 64             # uvicorn's limit_concurrency: more connections get 503
    keepalive_s: float = 5.0              # uvicorn's timeout_keep_alive: idle keep-alive connections close
    job_ttl_s: float = 600.0              # /api/jobs: a finished job is kept this long for its client
    max_results_mb: float = 512.0         # /api/jobs: results kept at most (the oldest are dropped first)
    redis_url: str = ""                   # e.g. redis://redis:6379/0: jobs on Redis, run by `superres worker`s
    worker_heartbeat_s: float = 5.0       # with REDIS_URL: a worker that stops heartbeating for 3 of these is dead

    @classmethod
    def from_env(cls, env=None) -> Settings:
        env = os.environ if env is None else env
        s = cls()
        for f in fields(cls):
            raw = env.get(f.name.upper(), "").strip()
            if not raw:
                continue
            typ = {"Path": Path, "str": str, "float": float, "int": int, "int | None": int}[f.type]
            try:
                setattr(s, f.name, typ(raw))
            except ValueError:
                raise ValueError(f"{f.name.upper()}={raw!r} is not a valid {typ.__name__}") from None
        if s.workers < 1 or s.queue < 0 or min(s.max_upload_mb, s.max_input_mp, s.max_output_mp, s.model_max_mb,
                                               s.job_timeout_s, s.upload_timeout_s, s.max_connections, s.job_ttl_s,
                                               s.max_results_mb, s.worker_heartbeat_s) <= 0:
            raise ValueError("WORKERS must be >= 1, QUEUE >= 0, and the MAX_* limits and timeouts > 0")
        return s

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def uvicorn(self) -> dict:
        """The uvicorn settings that bound connections (`serve` passes them to uvicorn.run)."""
        return {"limit_concurrency": self.max_connections, "timeout_keep_alive": self.keepalive_s}


# ---- models: a local folder, or an archive fetched at start-up (superres.runtime.model_folder.fetch_model) -------
async def load_models(settings: Settings) -> Enhancer:
    """Fetch (if MODEL_URL) and load the models; raises ModelError with a message fit for the console."""
    model_dir = settings.model_dir
    if settings.model_url:
        model_dir = await fetch_model(settings.model_url, settings.model_cache, settings.model_sha256,
                                      int(settings.model_max_mb * 1024 * 1024))
    return await asyncio.to_thread(Enhancer, model_dir, threads=settings.threads)


# ---- reading a request into a job (the checks and limits: superres.runtime.upload) -------------------------------
async def read_job(request: Request) -> Job:
    """Read an upload (multipart: file, scale, strength, format, quality) into a checked Job; raises HTTPException
    (4xx)."""
    st = request.app.state
    s: Settings = st.settings
    if await st.jobs.full():                           # decided before the upload is read
        raise HTTPException(429, BUSY, {"Retry-After": "30", "Connection": "close"})
    try:
        upload.check_headers(request.headers, s)
        body = Request(request.scope, upload.limited_receive(request.receive, s))
        async with body.form(max_files=1, max_fields=8) as form:
            file = form.get("file")
            if file is None or isinstance(file, str):
                raise upload.UploadError(400, "No image received: send it in a form field named 'file'.")
            data = await file.read()
            return upload.check_job(form, data, file.filename, st.enhancer, s)
    except upload.UploadError as e:
        raise HTTPException(e.status, str(e), {"Connection": "close"} if e.close else None) from None


def download_name(job: Job) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(job.filename).stem)[:80] or "image"
    return f"{stem}_x{job.scale}.{OUTPUT_FORMATS[job.format][2]}"


def result_response(job: Job) -> Response:
    return Response(job.result, media_type=OUTPUT_FORMATS[job.format][1], headers={
        "Content-Disposition": f'inline; filename="{download_name(job)}"',
        "X-Input-Size": f"{job.in_size[0]}x{job.in_size[1]}",
        "X-Output-Size": f"{job.out_size[0]}x{job.out_size[1]}",
        "X-Strength": f"{Enhancer.round_strength(job.strength):.2f}",
        "X-Processing-Seconds": f"{job.seconds:.2f}",
    })


async def _disconnected(receive) -> None:
    """Return when the client hangs up (after the body, uvicorn's `receive` waits for exactly that)."""
    while (await receive())["type"] != "http.disconnect":
        pass


# ---- endpoints ------------------------------------------------------------------------------------------
templates = Jinja2Templates(directory=HERE / "templates")
BUSY = "The server is busy with other images; please try again in a minute."


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def index(request: Request):
    st = request.app.state
    s: Settings = st.settings
    return templates.TemplateResponse(request, "index.html", {
        "version": __version__,
        "untrained": bool(st.enhancer.card.get("untrained")),
        "default_strength": st.enhancer.default_strength,
        "max_upload_mb": s.max_upload_mb, "max_input_mp": s.max_input_mp, "max_output_mp": s.max_output_mp,
    })


async def healthz(request: Request):
    """Also the load balancer's check: with REDIS_URL it answers 503 while Redis is unreachable."""
    st = request.app.state
    card = st.enhancer.card
    queue = await st.jobs.health()          # backend, workers, running, waiting, capacity
    return JSONResponse({
        "status": "ok",
        "models_loaded": True,
        "model": {"name": card.get("name"), "created": card.get("created"), "untrained": bool(card.get("untrained")),
                  "scales": st.enhancer.scales, "default_strength": st.enhancer.default_strength},
        "version": __version__,
        **queue,
    })


async def enhance(request: Request):
    """POST /api/enhance: the result in the response. A client that hangs up cancels its job (next tile)."""
    try:
        job = await read_job(request)
    except ClientDisconnect:
        log.info("a client hung up during its upload")
        return error(400, "The upload was interrupted.")
    jobs = request.app.state.jobs
    try:
        await jobs.submit(job)
    except Busy:
        return error(429, BUSY, {"Retry-After": "30"})
    ended = asyncio.ensure_future(jobs.wait(job))
    hangup = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({ended, hangup}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hangup.cancel()
    if not ended.done():
        ended.cancel()
        await jobs.cancel(job)
        log.info("the client of %s hung up; its job stops at the next tile", job.filename)
        return error(400, "The client hung up.")
    job = ended.result()                    # raises Unavailable if Redis was lost meanwhile
    if job.state != "done":
        return error(job.status, job.error or "The job was cancelled.")
    return result_response(job)


async def create_job(request: Request):
    """POST /api/jobs: queue the image, answer at once; the client polls the status and fetches the result."""
    jobs = request.app.state.jobs
    job = await read_job(request)
    try:
        await jobs.submit(job, keep=True)
    except Busy:
        return error(429, BUSY, {"Retry-After": "30"})
    status_url = request.url_for("job_status", job_id=job.id).path
    return JSONResponse({"id": job.id, "status_url": status_url, "result_url": status_url + "/result"},
                        status_code=202, headers={"Location": status_url})


NO_JOB = "There is no such job: it never existed, was deleted or has expired."


async def _job(request: Request, result: bool = False) -> Job:
    job = await request.app.state.jobs.get(request.path_params["job_id"], result=result)
    if job is None:
        raise HTTPException(404, NO_JOB)
    return job


async def job_status(request: Request):
    return JSONResponse(await request.app.state.jobs.view(await _job(request)))


async def job_result(request: Request):
    job = await _job(request, result=True)
    if job.state != "done":
        why = f": {job.error}" if job.error else "."
        raise HTTPException(409, f"The job has no result; it is {job.state}{why}")
    if job.result is None:                  # (Redis) it expired between two reads
        raise HTTPException(404, NO_JOB)
    return result_response(job)


async def delete_job(request: Request):
    """Cancel a queued or running job (202 while a running one reaches its next tile), or forget a finished one."""
    jobs = request.app.state.jobs
    job = await _job(request)
    if job.over:
        await jobs.forget(job)
        return JSONResponse(await jobs.view(job))
    job = await jobs.cancel(job)            # a queued one is cancelled at once; a running one at its next tile
    return JSONResponse(await jobs.view(job), status_code=200 if job.over else 202)


async def favicon(request: Request):
    return FileResponse(HERE / "static" / "favicon.ico", media_type="image/x-icon")


async def http_error(request: Request, exc: HTTPException):
    return error(exc.status_code, exc.detail if isinstance(exc.detail, str) else "Bad request.", exc.headers)


async def unavailable(request: Request, exc: Unavailable):
    return error(503, str(exc), {"Retry-After": "5"})


async def server_error(request: Request, exc: Exception):
    log.exception("unexpected error on %s", request.url.path)
    return error(500, "Something went wrong on the server while enhancing the image. Please try again.")


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
}


class SecurityHeaders:
    """ASGI middleware that adds SECURITY_HEADERS to every response (pure ASGI: `receive` is left alone, so
    disconnects still reach the endpoints)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)
        await self.app(scope, receive, send_with_headers)


ROUTES = [
    Route("/", index, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/api/enhance", enhance, methods=["POST"]),
    Route("/api/jobs", create_job, methods=["POST"]),
    Route("/api/jobs/{job_id}", job_status, methods=["GET"], name="job_status"),
    Route("/api/jobs/{job_id}", delete_job, methods=["DELETE"]),
    Route("/api/jobs/{job_id}/result", job_result, methods=["GET"]),
    Route("/favicon.ico", favicon, methods=["GET"]),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
]


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    """Load the models (unless `create_app` was given them) and start the job store (the in-memory `Jobs` unless
    `create_app` was given one). uvicorn runs this before it opens its socket and exits if it fails, so every
    request sees `state.enhancer` and `state.jobs` set."""
    st = app.state
    if st.enhancer is None:
        st.enhancer = await load_models(st.settings)
    s: Settings = st.settings
    if st.jobs is None:
        st.jobs = Jobs(st.enhancer, s.workers, s.queue, tile=s.tile, max_input_pixels=int(s.max_input_mp * 1e6),
                       timeout_s=s.job_timeout_s, ttl_s=s.job_ttl_s,
                       max_results_bytes=int(s.max_results_mb * 1024 * 1024))
    await st.jobs.start()
    log.info("models loaded from %s (%s)", st.enhancer.model_dir, st.enhancer.card.get("name"))
    try:
        yield
    finally:
        await st.jobs.close()


def create_app(settings: Settings | None = None, enhancer: Enhancer | None = None, jobs=None) -> Starlette:
    """The ASGI app. Pass an already loaded `enhancer` to skip loading at start-up, and a job store `jobs` for
    another than the in-memory one (`serve` does both: a `RedisJobs` when REDIS_URL is set)."""
    app = Starlette(routes=ROUTES, lifespan=lifespan, middleware=[Middleware(SecurityHeaders)],
                    exception_handlers={HTTPException: http_error, Unavailable: unavailable,
                                        Exception: server_error})
    app.state.settings = settings or Settings.from_env()
    app.state.enhancer = enhancer
    app.state.jobs = jobs
    return app
