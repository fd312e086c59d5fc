"""The job store on Redis (REDIS_URL): web processes enqueue and follow jobs, `python -m superres worker` processes run
them. The same interface as the in-memory `superres.runtime.jobs.Jobs`, so any web process can follow, fetch and
cancel any job.

RQ carries each job (queue `superres`, the RQ job id is the job's id): its queue gives the queue position, its
registries and worker heartbeats find a job whose worker died, and `Retry(max=1)` runs such a job once more on
another worker, after which it ends `failed` (`_on_failure`). The rest lives in our own keys, each with a TTL:

    superres:job:{id}      hash: what GET /api/jobs/{id} shows, and the limits the web process admitted it under
                           (time limit, TTL, tile, ...), which the worker obeys
    superres:upload:{id}   the upload, until the job ends (a retry needs it)
    superres:cancel:{id}   set by DELETE; the worker reads it at every tile
    superres:result:{id}   the result, JOB_TTL_S after the job ends (then the hash expires too)
    superres:results       kept results by end time: over MAX_RESULTS_MB together, the oldest go (`_FINISH`)

Time is bounded: a worker heartbeats every WORKER_HEARTBEAT_S, also from a thread while a job runs; its job's entry in
RQ's started registry expires three heartbeats after the last one, and each web process runs RQ's cleanup of that
registry once a heartbeat (one process at a time: RQ's maintenance lock). So a job whose worker was killed is queued
again (or failed) within about four heartbeats, never left `running`.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
from urllib.parse import urlsplit

import redis
from rq import Queue, Retry, SimpleWorker, worker_registration
from rq.exceptions import AbandonedJobError
from rq.job import Job as RQJob
from rq.registry import StartedJobRegistry
from rq.timeouts import TimerDeathPenalty
from rq.utils import utcparse
from rq.worker import WorkerStatus

from superres.runtime.inference import Enhancer
from superres.runtime.jobs import Busy, Job, Unavailable, run_job, view

log = logging.getLogger("superres.runtime.redis_jobs")

QUEUE = "superres"
QUEUED_TTL_S = 24 * 3600          # a job no worker takes within a day is dropped
ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
OVER = ("done", "failed", "cancelled")
UNAVAILABLE = "The job queue is unavailable right now; please try again in a few seconds."
WORKER_DIED = ("The worker enhancing this image stopped (it was restarted, or ran out of memory), twice. "
               "Please try again, or try a smaller image.")
SERVER_ERROR = "Something went wrong on the server while enhancing the image. Please try again."


def _key(kind: str, job_id: str) -> str:
    return f"superres:{kind}:{job_id}"


def safe_url(url: str) -> str:
    """`url` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return parts.geturl()


def connect(url: str) -> redis.Redis:
    """A client for `url`, checked with a PING; raises Unavailable with a one-line reason."""
    try:
        conn = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10, health_check_interval=10)
        conn.ping()
    except (redis.RedisError, ValueError) as e:
        raise Unavailable(f"cannot reach Redis at {safe_url(url)} (REDIS_URL): {e}") from None
    return conn


# ---- a job as our hash ----------------------------------------------------------------------------------------
def _size(text: str) -> tuple:
    return tuple(int(v) for v in text.split("x")) if text else ()


def _job(job_id: str, h: dict) -> Job:
    """The Job a hash describes (its bytes decoded); `h` also carries the limits, read by the worker."""
    return Job(None, int(h["scale"]), float(h["strength"]), h["filename"], h["format"],
               int(h["quality"]) if h.get("quality") else None, id=job_id, state=h["state"],
               tiles_done=int(h.get("tiles_done", 0)), tiles_total=int(h.get("tiles_total", 0)),
               error=h.get("error") or None, status=int(h.get("status", 200)), in_size=_size(h.get("in_size", "")),
               out_size=_size(h.get("out_size", "")), seconds=float(h.get("seconds", 0)))


def _decode(h: dict) -> dict:
    return {k.decode(): v.decode() for k, v in h.items()}


def _ended(job: Job) -> dict:
    return {"state": job.state, "status": job.status, "error": job.error or "", "seconds": f"{job.seconds:.3f}",
            "in_size": "x".join(map(str, job.in_size)), "out_size": "x".join(map(str, job.out_size))}


# Ends a job in one step: its fields, its TTL, the upload and cancel flag gone, its result stored and, for a kept job,
# the kept results trimmed to their limit (oldest first, the newest always kept; a dropped job's hash goes too).
# KEYS: job, result, upload, cancel, results. ARGV: job id, result ("" for none), now, then field, value pairs.
_FINISH = """
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl_s'))
redis.call('DEL', KEYS[3], KEYS[4])
if not ttl then return 0 end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
local ms = math.max(1, math.floor(ttl * 1000))
redis.call('PEXPIRE', KEYS[1], ms)
if ARGV[2] == '' then return 1 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ms)
if redis.call('HGET', KEYS[1], 'keep') ~= '1' then return 1 end
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
local ids = redis.call('ZRANGE', KEYS[5], 0, -1)
local sizes, total = {}, 0
for i, id in ipairs(ids) do
  sizes[i] = redis.call('STRLEN', 'superres:result:' .. id)
  if sizes[i] == 0 then redis.call('ZREM', KEYS[5], id) end
  total = total + sizes[i]
end
local limit = tonumber(redis.call('HGET', KEYS[1], 'max_results_bytes'))
for i = 1, #ids - 1 do
  if total <= limit then break end
  if sizes[i] > 0 then
    total = total - sizes[i]
    redis.call('ZREM', KEYS[5], ids[i])
    redis.call('DEL', 'superres:result:' .. ids[i], 'superres:job:' .. ids[i])
  end
end
return 1
"""


def finish(conn: redis.Redis, job_id: str, fields: dict, result: bytes = b"") -> None:
    keys = [_key(k, job_id) for k in ("job", "result", "upload", "cancel")] + ["superres:results"]
    pairs = [str(v) for kv in {**fields, "finished": time.time()}.items() for v in kv]
    conn.eval(_FINISH, len(keys), *keys, job_id, result, time.time(), *pairs)


def _on_failure(rq_job: RQJob, exc_type, exc_value, traceback) -> bool:
    """RQ's exception handler, for a job whose worker died (AbandonedJobError, found by a registry cleanup) or that
    raised past `perform` (only a lost Redis can make it): RQ runs it again if it has a retry left, else it fails."""
    conn, key = rq_job.connection, _key("job", rq_job.id)
    try:
        if (conn.hget(key, "state") or b"done").decode() in OVER:
            return True                       # it had ended (or was forgotten) before RQ failed it
        if rq_job.retries_left:
            log.warning("job %s lost its worker; it runs again", rq_job.id[:6])
            conn.hset(key, mapping={"state": "queued", "tiles_done": 0, "tiles_total": 0})
        else:
            died = exc_type is AbandonedJobError
            finish(conn, rq_job.id, {"state": "failed", "status": 503 if died else 500,
                                     "error": WORKER_DIED if died else SERVER_ERROR})
    except redis.RedisError as e:
        log.warning("could not record the failure of job %s: %s", rq_job.id[:6], e)
    return True


# ---- the web side --------------------------------------------------------------------------------------------
class RedisJobs:
    """The store of the web processes: enqueue after the upload's checks, and read, cancel and forget any job."""

    def __init__(self, conn: redis.Redis, *, queue: int, tile: int | None, max_input_pixels: int, timeout_s: float,
                 ttl_s: float, max_results_bytes: int, heartbeat_s: float):
        self.conn, self.queue_limit, self.heartbeat_s = conn, queue, heartbeat_s
        self.queue = Queue(QUEUE, connection=conn)
        self.limits = {"tile": tile or "", "max_input_pixels": max_input_pixels, "timeout_s": timeout_s,
                       "ttl_s": ttl_s, "max_results_bytes": max_results_bytes}
        self._reaper: asyncio.Task | None = None
        self._lost = False                  # Redis is unreachable (logged once, not per request)

    async def _call(self, fn, *args):
        try:
            result = await asyncio.to_thread(fn, *args)
        except redis.RedisError as e:
            if not self._lost:
                log.warning("Redis is unreachable (%s); answering 503 until it is back", e)
            self._lost = True
            raise Unavailable(UNAVAILABLE) from None
        if self._lost:
            log.info("Redis is back")
            self._lost = False
        return result

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever())

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        self.conn.close()

    async def full(self) -> bool:
        return await self._call(self.conn.llen, self.queue.key) >= self.queue_limit

    async def submit(self, job: Job, keep: bool = False) -> None:
        await self._call(self._submit, job, keep)

    def _submit(self, job: Job, keep: bool) -> None:
        if self.queue.count >= self.queue_limit:
            raise Busy()
        ttl = math.ceil(self.limits["ttl_s"])
        fields = {"filename": job.filename, "scale": job.scale, "strength": job.strength, "format": job.format,
                  "quality": job.quality or "", "state": "queued", "tiles_done": 0, "tiles_total": 0,
                  "keep": int(keep), **self.limits}
        with self.conn.pipeline() as p:
            p.multi()                        # the job exists whole or not at all (RQ joins this transaction)
            p.hset(_key("job", job.id), mapping=fields)
            p.expire(_key("job", job.id), QUEUED_TTL_S)
            p.set(_key("upload", job.id), job.data, ex=QUEUED_TTL_S)
            self.queue.enqueue(perform, job.id, job_id=job.id, description="superres.runtime.redis_jobs.perform",
                               job_timeout=int(self.limits["timeout_s"]) + 60,   # RQ's backstop; ours is per tile
                               # (RQ's result_ttl=0 deletes the job, which fails in RQ 3.0 after a retry: kept)
                               ttl=QUEUED_TTL_S, result_ttl=ttl, failure_ttl=ttl,
                               retry=Retry(max=1), pipeline=p)
            p.execute()
        job.data = None

    async def wait(self, job: Job) -> Job:
        """Until `job` has ended; then it is read with its result and forgotten (/api/enhance keeps nothing)."""
        delay = 0.02
        while True:
            state = await self._call(self.conn.hget, _key("job", job.id), "state")
            if state is None or state.decode() in OVER:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.1)
        ended = await self.get(job.id, result=True)
        if ended is None:
            job.state, job.status, job.error = "failed", 503, "The job was lost on the server. Please try again."
            return job
        await self.forget(ended)
        return ended

    async def get(self, job_id: str, result: bool = False) -> Job | None:
        return await self._call(self._get, job_id, result) if ID.fullmatch(job_id) else None

    def _get(self, job_id: str, result: bool) -> Job | None:
        with self.conn.pipeline() as p:
            p.hgetall(_key("job", job_id))
            if result:                          # the result is read only where it is sent
                p.get(_key("result", job_id))
            h, *data = p.execute()
        if not h:
            return None
        job = _job(job_id, _decode(h))
        job.result = data[0] if data else None
        return job

    async def view(self, job: Job) -> dict:
        position = 0
        if job.state == "queued":
            index = await self._call(self.conn.lpos, self.queue.key, job.id)
            position = 0 if index is None else index + 1
        return view(job, position)

    async def cancel(self, job: Job) -> Job:
        return await self._call(self._cancel, job)

    def _cancel(self, job: Job) -> Job:
        self.conn.set(_key("cancel", job.id), 1, ex=int(self.limits["timeout_s"] + self.limits["ttl_s"]) + 60)
        if job.state == "queued" and self.conn.lrem(self.queue.key, 0, job.id):   # no worker has it: it never runs
            finish(self.conn, job.id, {"state": "cancelled"})
            self.conn.expire(RQJob.key_for(job.id), math.ceil(self.limits["ttl_s"]))   # RQ's record of it
            job.state = "cancelled"
        return job

    async def forget(self, job: Job) -> None:
        def forget():
            with self.conn.pipeline() as p:
                p.delete(*(_key(k, job.id) for k in ("job", "result", "upload", "cancel")))
                p.zrem("superres:results", job.id)
                p.execute()
        await self._call(forget)

    async def health(self) -> dict:
        return await self._call(self._health)

    def _health(self) -> dict:
        """Live workers: those that heartbeat within three heartbeats (a killed one stays registered a while)."""
        keys = sorted(worker_registration.get_keys(queue=self.queue))
        with self.conn.pipeline(transaction=False) as p:
            for key in keys:
                p.hmget(key, "last_heartbeat", "state")
            p.llen(self.queue.key)
            *states, waiting = p.execute()
        now = time.time()
        live = [s.decode() for beat, s in states
                if beat and s and now - utcparse(beat.decode()).timestamp() < 3 * self.heartbeat_s + 2]
        return {"backend": "redis", "workers": len(live), "running": live.count("busy"), "waiting": waiting,
                "capacity": len(live) + self.queue_limit}

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await asyncio.to_thread(self.reap)
            except redis.RedisError:
                pass                          # _call logs the outage
            except Exception:
                log.exception("cleaning the started-job registry failed")

    def reap(self) -> None:
        """Hand the jobs whose worker stopped heartbeating to RQ's cleanup (retry once, else `_on_failure`)."""
        lock = self.queue.registry_cleaning_key          # RQ's maintenance lock: one cleaner at a time
        if not self.conn.set(lock, 1, nx=True, ex=max(5, math.ceil(3 * self.heartbeat_s))):
            return
        try:
            StartedJobRegistry(queue=self.queue, death_penalty_class=TimerDeathPenalty).cleanup(
                exception_handlers=[_on_failure])
        finally:
            self.conn.delete(lock)


# ---- the worker side -----------------------------------------------------------------------------------------
_runner: Runner | None = None           # set by `work`, in a worker process


def perform(job_id: str) -> None:
    """The function RQ runs for each job, in a worker process."""
    _runner.run(job_id)


class Runner:
    """Runs one job: reads it, enhances it with the loaded models, reports tiles, stores how it ended."""

    def __init__(self, conn: redis.Redis, enhancer: Enhancer):
        self.conn, self.enhancer = conn, enhancer

    def run(self, job_id: str) -> None:
        h = _decode(self.conn.hgetall(_key("job", job_id)))
        if not h or h["state"] in OVER:
            return                              # forgotten, expired or ended while it waited
        job = _job(job_id, h)
        job.data = self.conn.get(_key("upload", job_id))
        if self.conn.exists(_key("cancel", job_id)):
            job.cancel.set()
        if job.data is None and not job.cancel.is_set():
            job.state, job.status, job.error = "failed", 503, "The upload was lost on the server. Please try again."
        else:
            timeout_s, ttl_s = float(h["timeout_s"]), float(h["ttl_s"])
            with self.conn.pipeline() as p:
                p.hset(_key("job", job_id), mapping={"state": "running", "tiles_done": 0, "tiles_total": 0})
                p.expire(_key("job", job_id), math.ceil(2 * timeout_s + ttl_s) + 60)
                p.execute()
            job.watch = self._watch
            run_job(job, self.enhancer, tile=int(h["tile"]) if h["tile"] else None,
                    max_input_pixels=int(h["max_input_pixels"]), timeout_s=timeout_s)
        finish(self.conn, job_id, _ended(job), job.result or b"")

    def _watch(self, job: Job) -> None:
        """At every tile: report the progress, and read a cancel. A Redis hiccup here does not stop the job."""
        try:
            with self.conn.pipeline(transaction=False) as p:
                p.hset(_key("job", job.id), mapping={"tiles_done": job.tiles_done, "tiles_total": job.tiles_total})
                p.exists(_key("cancel", job.id))
                if p.execute()[1]:
                    job.cancel.set()
        except redis.RedisError as e:
            log.warning("could not report the progress of job %s: %s", job.id[:6], e)


class Worker(SimpleWorker):
    """RQ's SimpleWorker (jobs run in this process, where the models are loaded once: ONNX Runtime does not survive
    RQ's fork) that also heartbeats from a thread while a job runs, so that its death is seen within three
    heartbeats instead of the job's whole time limit, and registers again after Redis restarted empty."""
    max_connection_wait_time = 5.0      # retry a lost Redis at least every 5 s (RQ: 60)

    def __init__(self, *args, heartbeat_s: float, **kwargs):
        self.heartbeat_s, self.stopping = heartbeat_s, False
        super().__init__(*args, **kwargs)

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        return math.ceil(3 * self.heartbeat_s)

    def subscribe(self):
        """RQ's, with its command listener polling every second: stopping it waits for its poll (RQ: 60 s)."""
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(sleep_time=1, daemon=True,
                                                       exception_handler=self._pubsub_exception_handler)

    def request_stop(self, signum, frame):
        self.stopping = True                # SIGTERM / SIGINT: finish the job at hand, then stop
        super().request_stop(signum, frame)

    def heartbeat(self, timeout=None, pipeline=None):
        super().heartbeat(timeout, pipeline)
        if pipeline is None and self.birth_date and not self.connection.hexists(self.key, "birth"):
            log.info("Redis lost this worker's registration (restarted?); registering again")
            with self.connection.pipeline() as p:
                p.hset(self.key, mapping={**self.serialize(), "state": self.get_state()})
                worker_registration.register(self, p)
                p.expire(self.key, self.worker_ttl + 60)
                p.execute()

    def execute_job(self, job, queue):
        execution = self.prepare_execution(job)
        done = threading.Event()

        def beat():
            while not done.wait(self.heartbeat_s):
                try:
                    self.maintain_heartbeats(job, execution)
                except redis.RedisError:
                    pass

        beater = threading.Thread(target=beat, name="heartbeat", daemon=True)
        beater.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            done.set()
            beater.join()
        self.set_state(WorkerStatus.IDLE)


def work(conn: redis.Redis, enhancer: Enhancer, heartbeat_s: float, log_level: str = "INFO") -> int:
    """Take jobs until SIGTERM/SIGINT (the job at hand is finished first). When Redis is lost, wait for it and go on
    with a fresh RQ worker (the models stay loaded)."""
    global _runner
    _runner = Runner(conn, enhancer)
    beat = math.ceil(heartbeat_s)
    while True:
        worker = Worker([Queue(QUEUE, connection=conn)], connection=conn, heartbeat_s=heartbeat_s,
                        exception_handlers=[_on_failure], worker_ttl=beat + 15,   # idle: BLMOVE waits `beat` s
                        job_monitoring_interval=beat, maintenance_interval=30, log_job_description=False)
        try:
            worker.work(logging_level=log_level)
        except redis.RedisError as e:
            log.warning("lost Redis: %s", e)
        if worker.stopping:
            return 0
        while True:
            try:
                conn.ping()
                break
            except redis.RedisError:
                time.sleep(1)
        log.info("Redis is reachable; taking jobs again")
