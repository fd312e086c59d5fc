"""Serving beyond one process: two `superres serve` web processes and two `superres worker` processes share
their jobs on a real redis-server (started here on a free loopback port; never a mock): a job is followed, fetched and
cancelled through either web process, a worker killed mid-job costs a retry or a clear failure within seconds, a lost
Redis is answered with 503 and recovered from, and 16 jobs at once all come back right."""
import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import redis
from PIL import Image
from rq import Worker

from conftest import REPO, RedisServer, astronaut, free_port, run_server, run_worker
from test_imaging import _bytes
from test_webapp_jobs import photo, status, submit, wait_for  # the job API's helpers, one copy

HEARTBEAT_S = 1.0                   # WORKER_HEARTBEAT_S here: a dead worker's job is seen within ~4 s
OVER = ("done", "failed", "cancelled")


class Cluster:
    """The web processes and workers of one test module, on one Redis; workers can be killed and replaced."""

    def __init__(self, stack: contextlib.ExitStack, env: dict, redis_url: str):
        self.stack, self.env, self.redis = stack, env, redis.Redis.from_url(redis_url)
        self.workers = [stack.enter_context(run_worker(env)) for _ in range(2)]   # they start meanwhile
        self.webs = [stack.enter_context(run_server(env))[0] for _ in range(2)]
        for proc in self.workers:
            self.registered(proc)

    def registered(self, proc: subprocess.Popen) -> subprocess.Popen:
        deadline = time.monotonic() + 60
        while proc.pid not in self.worker_pids():
            assert proc.poll() is None and time.monotonic() < deadline, proc.log_path.read_text()
            time.sleep(0.1)
        return proc

    def start_worker(self) -> subprocess.Popen:
        proc = self.stack.enter_context(run_worker(self.env))
        self.workers.append(proc)
        return self.registered(proc)

    def worker_pids(self) -> dict:
        """{pid: the id of the job it runs, or None} of the registered workers."""
        return {w.pid: w.get_current_job_id() for w in Worker.all(connection=self.redis)}

    def kill_the_worker_of(self, job: dict, not_pid: int | None = None, timeout: float = 30) -> int:
        """SIGKILL the worker running `job` once it has done a few tiles; its pid."""
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, "no worker took the job"
            pid = next((p for p, j in self.worker_pids().items() if j == job["id"] and p != not_pid), None)
            if pid is not None and status(self.webs[1], job)["tiles_done"] >= 3:
                break
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        next(p for p in self.workers if p.pid == pid).wait(10)
        return pid

    def replace_dead_workers(self) -> None:
        for proc in [p for p in self.workers if p.poll() is not None]:
            self.workers.remove(proc)
            self.start_worker()

    def keys(self, pattern: str) -> set:
        return set(self.redis.scan_iter(pattern))


@pytest.fixture(scope="module")
def cluster(untrained_model_dir, redis_server):
    env = {"MODEL_DIR": str(untrained_model_dir), "REDIS_URL": redis_server.url, "TILE": "64", "QUEUE": "32",
           "THREADS": "1", "JOB_TTL_S": "60", "WORKER_HEARTBEAT_S": str(HEARTBEAT_S)}
    with contextlib.ExitStack() as stack:
        yield Cluster(stack, env, redis_server.url)


def test_healthz_counts_the_live_workers_and_the_queue(cluster):
    for base in cluster.webs:
        j = httpx.get(base + "/healthz").json()
        assert j["status"] == "ok" and j["backend"] == "redis" and j["workers"] == 2
        assert j["waiting"] == 0 and j["capacity"] == 2 + 32


def test_a_job_taken_by_one_web_process_is_followed_and_fetched_through_the_other(cluster):
    a, b = cluster.webs
    job = submit(a, photo(256), scale=2)
    assert len(job["id"]) >= 22
    seen = wait_for(b, job)
    final = seen[-1]
    assert final["state"] == "done" and final["progress"] == 1.0 and final["error"] is None
    assert final["tiles_done"] == final["tiles_total"] == 16 and final["queue_position"] == 0
    done = [s["tiles_done"] for s in seen]
    assert done == sorted(done)                                             # progress only goes forward
    r = httpx.get(b + job["result_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (512, 512) and r.headers["x-output-size"] == "512x512"
    assert 'filename="astro_x2.png"' in r.headers["content-disposition"]
    assert httpx.delete(a + job["status_url"]).status_code == 200           # forgotten through A ...
    assert httpx.get(b + job["status_url"]).status_code == 404              # ... gone from B
    assert not cluster.keys(f"superres:*{job['id']}")


def test_queue_position_and_cancel_through_the_other_web_process(cluster):
    """Three long jobs on two workers: the third waits (position 1, seen from B); cancelling it through B is
    immediate; cancelling a running one through B stops it at its next tile, and its worker is free again."""
    a, b = cluster.webs
    first, second, third = (submit(a, photo(800), scale=4) for _ in range(3))
    wait_for(b, first, ("running",))
    wait_for(b, second, ("running",))
    s3 = status(b, third)
    assert s3["state"] == "queued" and s3["queue_position"] == 1 and s3["progress"] == 0
    assert httpx.get(b + first["result_url"]).status_code == 409
    r = httpx.delete(b + third["status_url"])
    assert r.status_code == 200 and r.json()["state"] == "cancelled" and r.json()["queue_position"] == 0
    assert status(a, third)["state"] == "cancelled"
    while status(a, first)["tiles_done"] < 2:
        time.sleep(0.05)
    assert httpx.delete(b + first["status_url"]).status_code == 202
    t = time.monotonic()
    final = wait_for(a, first, timeout=30)[-1]
    assert final["state"] == "cancelled" and time.monotonic() - t < 5
    assert 0 < final["tiles_done"] < final["tiles_total"]                  # it stopped part-way
    r = httpx.get(a + first["result_url"])
    assert r.status_code == 409 and "cancelled" in r.json()["error"]
    assert httpx.delete(a + second["status_url"]).status_code == 202
    small = submit(b, photo(48), scale=2)                                  # the workers are free again
    assert wait_for(a, small, timeout=20)[-1]["state"] == "done"
    assert wait_for(a, second)[-1]["state"] == "cancelled"


def test_the_time_limit_of_the_web_process_that_took_the_job_holds(cluster):
    """JOB_TIMEOUT_S travels with the job: a web process with a 1 s limit, on the same Redis and workers."""
    with run_server({**cluster.env, "JOB_TIMEOUT_S": "1"}) as (strict, _):
        t = time.perf_counter()
        r = httpx.post(strict + "/api/enhance", files={"file": ("big.png", photo(800))}, data={"scale": "4"},
                       timeout=60)
        assert r.status_code == 503 and "1 s limit" in r.json()["error"] and time.perf_counter() - t < 6


@pytest.mark.parametrize("data,fields,status_code,words", [
    (b"just text", {}, 415, "not an image"),
    (photo(32), {"scale": 3}, 400, "scale"),
    (photo(32), {"format": "gif"}, 400, "format"),
    (photo(32), {"format": "jpeg", "quality": 0}, 400, "quality"),
])
def test_bad_uploads_are_refused_before_anything_is_enqueued(cluster, data, fields, status_code, words):
    before = cluster.keys("superres:upload:*") | cluster.keys("rq:job:*")
    for base in cluster.webs:
        r = httpx.post(base + "/api/jobs", files={"file": ("x.png", data)}, data={k: str(v) for k, v in fields.items()})
        assert r.status_code == status_code and words in r.json()["error"].lower()
    assert cluster.keys("superres:upload:*") | cluster.keys("rq:job:*") <= before
    assert cluster.redis.llen("rq:queue:superres") == 0


def test_an_oversized_upload_is_refused_before_anything_is_enqueued(cluster):
    with run_server({**cluster.env, "MAX_UPLOAD_MB": "0.05", "MAX_INPUT_MP": "0.01"}) as (small, _):
        before = cluster.keys("superres:upload:*")
        r = httpx.post(small + "/api/jobs", files={"file": ("big.png", photo(400))})
        assert r.status_code == 413
        r = httpx.post(small + "/api/jobs", files={"file": ("wide.png", photo(120))})     # 0.0144 MP
        assert r.status_code == 413 and "megapixels" in r.json()["error"]
        assert cluster.keys("superres:upload:*") <= before


def test_16_concurrent_jobs_all_complete_with_correct_sizes(cluster):
    """Half on /api/enhance, half on /api/jobs, spread over both web processes; both workers take part."""
    live = {p.pid for p in cluster.workers if p.poll() is None}

    def done_per_worker():
        return {w.pid: w.successful_job_count for w in Worker.all(connection=cluster.redis) if w.pid in live}
    before = done_per_worker()
    sizes = [(24 + 4 * i, 40 - 2 * i) for i in range(16)]

    async def one(client, i):
        w, h = sizes[i]
        scale = 2 if i % 3 else 4
        base = cluster.webs[i % 2]
        files = {"file": (f"p{i}.png", _bytes(astronaut().resize((w, h)), "PNG"))}
        if i % 2:
            r = await client.post(base + "/api/enhance", files=files, data={"scale": str(scale)})
        else:
            r = await client.post(base + "/api/jobs", files=files, data={"scale": str(scale)})
            assert r.status_code == 202, r.text
            url = cluster.webs[(i + 1) % 2] + r.json()["status_url"]            # followed through the other one
            while (await client.get(url)).json()["state"] not in OVER:
                await asyncio.sleep(0.05)
            r = await client.get(url + "/result")
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(r.content)).size == (w * scale, h * scale)
        assert r.headers["x-input-size"] == f"{w}x{h}"

    async def main():
        async with httpx.AsyncClient(timeout=120) as client:
            await asyncio.gather(*(one(client, i) for i in range(16)))
    asyncio.run(main())
    after = done_per_worker()
    assert sum(after.values()) - sum(before.values()) == 16
    assert len(after) == 2 and all(after[pid] > before[pid] for pid in after)


def test_a_worker_killed_mid_job_hands_it_to_another(cluster):
    a, b = cluster.webs
    job = submit(a, photo(700), scale=4)
    try:
        killed = cluster.kill_the_worker_of(job)
        t = time.monotonic()
        final = wait_for(b, job, timeout=60)[-1]
        assert final["state"] == "done" and final["error"] is None, final["error"]
        assert time.monotonic() - t < 4 * HEARTBEAT_S + 30                   # noticed, then run again in full
        survivor, = (p.pid for p in cluster.workers if p.poll() is None)
        assert survivor != killed
        r = httpx.get(a + job["result_url"])
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(r.content)).size == (2800, 2800)
    finally:
        cluster.replace_dead_workers()


def test_a_job_whose_workers_die_twice_fails_with_a_clear_error_in_bounded_time(cluster):
    a, b = cluster.webs
    job = submit(a, photo(700), scale=4)
    try:
        first = cluster.kill_the_worker_of(job)
        cluster.kill_the_worker_of(job, not_pid=first)                 # the retry, on the other worker
        t = time.monotonic()
        final = wait_for(b, job, timeout=30)[-1]
        assert final["state"] == "failed" and "stopped" in final["error"]
        assert time.monotonic() - t < 4 * HEARTBEAT_S + 3               # never left `running`
        r = httpx.get(a + job["result_url"])
        assert r.status_code == 409 and "stopped" in r.json()["error"]
    finally:
        cluster.replace_dead_workers()
    assert wait_for(b, submit(b, photo(40), scale=2), timeout=30)[-1]["state"] == "done"


def test_redis_lost_while_serving_answers_503_and_the_service_recovers(cluster, redis_server):
    a, b = cluster.webs
    redis_server.stop()
    try:
        r = httpx.post(a + "/api/jobs", files={"file": ("x.png", photo(32))})
        assert r.status_code == 503 and r.headers["retry-after"] and "unavailable" in r.json()["error"]
        assert httpx.get(b + "/api/jobs/abcdefghijklmnopqrstuvwx").status_code == 503
        assert httpx.get(b + "/healthz").status_code == 503
        assert httpx.get(a + "/").status_code == 200                            # the page does not need Redis
    finally:
        redis_server.start()                                                   # empty, on the same port
    deadline = time.monotonic() + 30
    while True:
        r = httpx.get(a + "/healthz")
        if r.status_code == 200 and r.json()["workers"] == 2:
            break
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
    job = submit(a, photo(64), scale=2)
    assert wait_for(b, job, timeout=30)[-1]["state"] == "done"


def test_redis_unreachable_at_start_is_one_line_and_exit_2(untrained_model_dir):
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "MODEL_DIR": str(untrained_model_dir)}
    for verb in ("serve", "worker"):
        res = subprocess.run([sys.executable, "-m", "superres", verb, "--port", "1"] if verb == "serve" else
                             [sys.executable, "-m", "superres", verb], env=env, capture_output=True, text=True,
                             cwd=REPO, timeout=60, check=False)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        line, = res.stderr.strip().splitlines()
        assert line.startswith("error: cannot reach Redis at redis://127.0.0.1:") and "REDIS_URL" in line


def test_several_workers_from_one_command(untrained_model_dir):
    """`superres worker --workers 2`: two worker processes; one that is killed is started again; SIGTERM stops all."""
    server = RedisServer().start()
    try:
        env = {"MODEL_DIR": str(untrained_model_dir), "REDIS_URL": server.url, "WORKER_HEARTBEAT_S": "1"}
        with run_worker(env, ("--workers", "2")) as parent:
            conn = redis.Redis.from_url(server.url)

            def pids_when(ok):
                deadline = time.monotonic() + 60
                while not ok(found := {w.pid for w in Worker.all(connection=conn)}):
                    assert parent.poll() is None and time.monotonic() < deadline, parent.log_path.read_text()
                    time.sleep(0.1)
                return found
            first = pids_when(lambda pids: len(pids) == 2)
            os.kill(min(first), signal.SIGKILL)
            pids_when(lambda pids: pids - first)                            # a new one
            parent.send_signal(signal.SIGTERM)
            assert parent.wait(30) == 0
    finally:
        server.stop()
