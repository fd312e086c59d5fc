"""The queue every enhancement goes through (the web app's /api/enhance and /api/jobs; torch-free).

A `Job` is one image from admission to its result or error; `Jobs` runs them on `workers` threads, admits at most
`workers + queue` at a time, reports each job's tile progress and queue position, and stops a job at its next
tile when it is cancelled or runs past `timeout_s` (both through the Enhancer's per-tile `progress` callback).
Jobs kept for later collection (`keep`) expire `ttl_s` after they end, and their results together stay under
`max_results_bytes` (the oldest go first; the newest result is always kept).
"""
from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .imaging import ImageError, encode, load_image
from .inference import Cancelled, Enhancer

log = logging.getLogger("superres.jobs")


class Busy(Exception):
    """Every worker is busy and the queue is full."""


@dataclass(eq=False)
class Job:
    """One image to enhance. The worker thread writes the progress fields; anyone may set `cancel`, and the job
    stops at its next tile."""
    data: bytes | None
    scale: int
    strength: float
    filename: str
    format: str = "png"                 # a key of superres.imaging.OUTPUT_FORMATS
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

    @property
    def over(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def progress(self, done: int, total: int) -> None:
        """Called by the Enhancer before the first tile and after each one."""
        self.tiles_done, self.tiles_total = done, total
        if self.cancel.is_set() or time.monotonic() > self.deadline:
            raise Cancelled()


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

    def full(self) -> bool:
        return self.admitted >= self.capacity

    def submit(self, job: Job) -> asyncio.Future:
        """Queue `job`; the future completes when it has finished (done, failed or cancelled)."""
        if self.full():
            raise Busy()
        self.admitted += 1
        with self._lock:
            self.waiting.append(job)
        future = asyncio.get_running_loop().run_in_executor(self.executor, self._run, job)
        future.add_done_callback(lambda _: setattr(self, "admitted", self.admitted - 1))
        return future

    def keep(self, job: Job) -> None:
        self.expire()
        self.kept[job.id] = job

    def get(self, job_id: str) -> Job | None:
        self.expire()
        return self.kept.get(job_id)

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
        job.deadline = time.monotonic() + self.timeout_s
        t0 = time.perf_counter()
        try:
            job.progress(0, 0)                     # cancelled while it waited: nothing to do
            job.state = "running"
            img = load_image(job.data, self.max_input_pixels)
            job.in_size = img.size
            out = self.enhancer.enhance(img, scale=job.scale, strength=job.strength, tile=self.tile,
                                        progress=job.progress)
            job.result, job.out_size = encode(out, job.format, job.quality), out.size
            job.state = "done"
        except Cancelled:
            if job.cancel.is_set():
                job.state = "cancelled"
            else:
                job.state, job.status = "failed", 503
                job.error = (f"This image took longer than this server's {self.timeout_s:g} s limit "
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
            with self._lock:
                self.running -= 1

    def view(self, job: Job) -> dict:
        """What GET /api/jobs/{id} answers."""
        total = job.tiles_total
        return {"id": job.id, "state": job.state,
                "progress": 1.0 if job.state == "done" else round(job.tiles_done / total, 4) if total else 0.0,
                "tiles_done": job.tiles_done, "tiles_total": total, "queue_position": self.position(job),
                "error": job.error}

    def shutdown(self):
        for job in self.kept.values():
            job.cancel.set()
        self.executor.shutdown(wait=False, cancel_futures=True)
