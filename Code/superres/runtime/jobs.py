"""The queue every enhancement goes through (the web app's /api/enhance and /api/jobs; torch-free).

A `Job` is one image from admission to its result or error; `run_job` enhances it (one home for how a job ends:
done, failed with a message fit for the user, or cancelled). It stops at its next tile when it is cancelled or runs
past its time limit (both through the Enhancer's per-tile `progress` callback).

A job store is what the web app calls, all of it `async`: `full`, `submit`, `wait` (/api/enhance), `get`, `view`,
`cancel`, `forget` (/api/jobs), `health` (/healthz), `start` and `close`. Two implement it:

* `Jobs` (here, the default): `workers` threads in this process, at most `workers + queue` jobs admitted at a time,
  jobs and results in this process's memory;
* `superres.runtime.redis_jobs.RedisJobs` (with REDIS_URL): the jobs on Redis, run by `python -m superres worker`
  processes, so that any web process can follow, fetch and cancel any job. `superres.runtime.serve` chooses between
  them.

In both, jobs kept for later collection (`keep`) expire `ttl_s` after they end, and their results together stay under
`max_results_bytes` (the oldest go first; the newest result is always kept). A store that cannot reach its backend
raises `Unavailable` (the web app answers 503).
"""
from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from superres.runtime.imaging import ImageError, encode, load_image
from superres.runtime.inference import Cancelled, Enhancer

log = logging.getLogger("superres.runtime.jobs")


class Busy(Exception):
    """Every worker is busy and the queue is full."""


class Unavailable(Exception):
    """The job store cannot be reached (Redis down); the message is fit for the user."""


@dataclass(eq=False)
class Job:
    """One image to enhance. The worker writes the progress fields; anyone may set `cancel`, and the job stops at
    its next tile. `watch`, when set, is called at every tile (the Redis worker reports progress and reads cancels
    through it)."""
    data: bytes | None
    scale: int
    strength: float
    filename: str
    format: str = "png"                 # a key of superres.runtime.imaging.OUTPUT_FORMATS
    quality: int | None = None
    id: str = field(default_factory=lambda: secrets.token_urlsafe(18))   # unguessable
    state: str = "queued"               # queued | running | done | failed | cancelled
    tiles_done: int = 0
    tiles_total: int = 0
    error: str | None = None
    status: int = 200                   # the HTTP status of `error`
    result: bytes | None = None
    in_size: tuple = ()
    out_size: tuple = ()
    seconds: float = 0.0
    deadline: float = math.inf
    finished: float = math.inf          # time.monotonic() when it ended
    cancel: threading.Event = field(default_factory=threading.Event)
    watch: Callable[[Job], None] | None = field(default=None, repr=False)
    future: asyncio.Future | None = field(default=None, repr=False)

    @property
    def over(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def progress(self, done: int, total: int) -> None:
        """Called by the Enhancer before the first tile and after each one."""
        self.tiles_done, self.tiles_total = done, total
        if self.watch is not None:
            self.watch(self)
        if self.cancel.is_set() or time.monotonic() > self.deadline:
            raise Cancelled()


def run_job(job: Job, enhancer: Enhancer, *, tile: int | None, max_input_pixels: int, timeout_s: float) -> None:
    """Enhance `job` within `timeout_s`; it ends done (its `result` set), failed (`error`, `status`) or cancelled."""
    job.deadline = time.monotonic() + timeout_s
    t0 = time.perf_counter()
    try:
        job.progress(0, 0)                     # cancelled while it waited: nothing to do
        job.state = "running"
        img = load_image(job.data, max_input_pixels)
        job.in_size = img.size
        out = enhancer.enhance(img, scale=job.scale, strength=job.strength, tile=tile, progress=job.progress)
        job.result, job.out_size = encode(out, job.format, job.quality), out.size
        job.state = "done"
    except Cancelled:
        if job.cancel.is_set():
            job.state = "cancelled"
        else:
            job.state, job.status = "failed", 503
            job.error = (f"This image took longer than this server's {timeout_s:g} s limit "
                         "and was stopped. Choose ×2 or a smaller image.")
    except ImageError as e:
        job.state, job.status, job.error = "failed", e.status, str(e)
    except Exception:
        log.exception("enhancing %s failed", job.filename)
        job.state, job.status = "failed", 500
        job.error = "Something went wrong on the server while enhancing the image. Please try again."
    finally:
        job.data = None                        # the upload is not needed any more
        job.seconds = time.perf_counter() - t0
        job.finished = time.monotonic()


def view(job: Job, queue_position: int) -> dict:
    """What GET /api/jobs/{id} answers (both stores)."""
    total = job.tiles_total
    return {"id": job.id, "state": job.state,
            "progress": 1.0 if job.state == "done" else round(job.tiles_done / total, 4) if total else 0.0,
            "tiles_done": job.tiles_done, "tiles_total": total, "queue_position": queue_position,
            "error": job.error}


class Jobs:
    """`workers` threads run jobs off the event loop; at most `workers + queue` jobs are admitted at a time."""

    def __init__(self, enhancer: Enhancer, workers: int, queue: int, *, tile: int | None, max_input_pixels: int,
                 timeout_s: float, ttl_s: float, max_results_bytes: int):
        self.enhancer, self.tile, self.max_input_pixels = enhancer, tile, max_input_pixels
        self.timeout_s, self.ttl_s, self.max_results_bytes = timeout_s, ttl_s, max_results_bytes
        self.workers, self.capacity = workers, workers + queue
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="enhance")
        self.admitted = 0                # queued + running; changed only on the event loop
        self.waiting: list[Job] = []     # queued jobs in order (the queue position), shared with the workers
        self.running = 0
        self._lock = threading.Lock()
        self.kept: dict[str, Job] = {}   # jobs kept for their clients (/api/jobs), by id, until they expire

    async def start(self) -> None:
        pass

    async def full(self) -> bool:
        return self.admitted >= self.capacity

    async def submit(self, job: Job, keep: bool = False) -> None:
        """Queue `job` (`keep`: for its client to collect later); `job.future` completes when it has ended."""
        if self.admitted >= self.capacity:
            raise Busy()
        self.admitted += 1
        with self._lock:
            self.waiting.append(job)
        job.future = asyncio.get_running_loop().run_in_executor(self.executor, self._run, job)
        job.future.add_done_callback(lambda _: setattr(self, "admitted", self.admitted - 1))
        if keep:
            self.expire()
            self.kept[job.id] = job

    async def wait(self, job: Job) -> Job:
        """Until `job` has ended (cancelling this wait leaves the job running)."""
        await asyncio.shield(job.future)
        return job

    async def get(self, job_id: str, result: bool = False) -> Job | None:
        """A kept job (its result is in memory anyway)."""
        self.expire()
        return self.kept.get(job_id)

    async def cancel(self, job: Job) -> Job:
        job.cancel.set()
        if job.state == "queued":
            job.state = "cancelled"             # its worker will skip it
        return job

    async def forget(self, job: Job) -> None:
        self.kept.pop(job.id, None)

    async def view(self, job: Job) -> dict:
        return view(job, self.position(job))

    async def health(self) -> dict:
        return {"backend": "memory", "workers": self.workers, "running": self.running,
                "waiting": max(0, self.admitted - self.running), "capacity": self.capacity}

    def expire(self) -> None:
        """Forget jobs that ended more than `ttl_s` ago, then the oldest finished ones while their results are
        over `max_results_bytes` together (the newest result is always kept)."""
        now = time.monotonic()
        for job in [j for j in self.kept.values() if now - j.finished > self.ttl_s]:
            del self.kept[job.id]
        done = sorted((j for j in self.kept.values() if j.result is not None), key=lambda j: j.finished)
        total = sum(len(j.result) for j in done)
        for job in done[:-1]:
            if total <= self.max_results_bytes:
                break
            total -= len(job.result)
            del self.kept[job.id]

    def position(self, job: Job) -> int:
        """0 when running, finished or cancelled; else 1 + the jobs still to run ahead of it."""
        if job.cancel.is_set():
            return 0
        with self._lock:
            live = [j for j in self.waiting if not j.cancel.is_set()]
        return live.index(job) + 1 if job in live else 0

    def _run(self, job: Job) -> None:
        with self._lock:
            self.waiting.remove(job)
            self.running += 1
        try:
            run_job(job, self.enhancer, tile=self.tile, max_input_pixels=self.max_input_pixels,
                    timeout_s=self.timeout_s)
        finally:
            with self._lock:
                self.running -= 1

    async def close(self) -> None:
        for job in self.kept.values():
            job.cancel.set()
        self.executor.shutdown(wait=False, cancel_futures=True)
