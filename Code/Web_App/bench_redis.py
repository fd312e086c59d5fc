"""Throughput of the Redis job queue (printed, not asserted): jobs per second for x4 of a 256x256 portrait, with one
web process and 1 or 2 `superres worker` processes on a redis-server of its own, beside the single process
(no REDIS_URL) for reference.

    .venv/bin/python Code/Web_App/bench_redis.py                  # the shipped models, 48 jobs per setting

All jobs are submitted at once through POST /api/jobs and followed to their results; jobs/s is their number over the
time from the first submission to the last result. The cores are shared out: one worker gets them all (THREADS=0),
two get one each. Timings depend on what else runs on the machine.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def portrait() -> bytes:
    from skimage import data
    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((256, 256), Image.LANCZOS).save(buf, "PNG")
    return buf.getvalue()


@contextlib.contextmanager
def process(cmd: list[str], env: dict, log_dir: Path, name: str):
    with open(log_dir / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


def wait_until(ok, procs: list, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a process exited; see {procs[0].args} and the logs")
        with contextlib.suppress(httpx.HTTPError):
            if ok():
                return
        time.sleep(0.2)
    raise TimeoutError


async def run_jobs(base: str, data: bytes, n: int) -> float:
    async def one(client):
        r = await client.post(base + "/api/jobs", files={"file": ("p.png", data)}, data={"scale": "4"})
        assert r.status_code == 202, r.text
        url = base + r.json()["status_url"]
        while (state := (await client.get(url)).json()["state"]) not in ("done", "failed", "cancelled"):
            await asyncio.sleep(0.02)
        assert state == "done", state
        r = await client.get(url + "/result")
        assert Image.open(io.BytesIO(r.content)).size == (1024, 1024)

    async with httpx.AsyncClient(timeout=300) as client:
        await asyncio.gather(*(one(client) for _ in range(2)))          # warm-up: each worker's first run
        t = time.perf_counter()
        await asyncio.gather(*(one(client) for _ in range(n)))
        return n / (time.perf_counter() - t)


def measure(workers: int, n: int, model_dir: str, log_dir: Path) -> float:
    """jobs/s with `workers` worker processes on Redis (0: the single process, no Redis)."""
    port = free_port()
    env = {"MODEL_DIR": model_dir, "QUEUE": str(n + 8), "PYTHONUNBUFFERED": "1"}
    py = [sys.executable, "-m", "superres"]
    with contextlib.ExitStack() as stack:
        if workers:
            rport = free_port()
            stack.enter_context(process(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no"], {}, log_dir, "redis"))
            env["REDIS_URL"] = f"redis://127.0.0.1:{rport}/0"
            time.sleep(0.5)
        procs = [stack.enter_context(process(py + ["worker"], {**env, "THREADS": "0" if workers == 1 else "1"},
                                             log_dir, f"worker{i}")) for i in range(workers)]
        procs.append(stack.enter_context(process(py + ["serve", "--host", "127.0.0.1", "--port", str(port)], env,
                                                 log_dir, "web")))
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(base + "/healthz").json()["workers"] == max(workers, 1), procs)
        return asyncio.run(run_jobs(base, portrait(), n))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=48)
    p.add_argument("--model-dir", default=str(REPO / "Code" / "superres" / "default_model"))
    args = p.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="bench_redis_"))
    print(f"x4 of 256x256 -> 1024x1024, {args.jobs} jobs at once, {os.cpu_count()} cores (logs: {log_dir})")
    for workers, label in [(0, "single process (no REDIS_URL), WORKERS=1"), (1, "Redis, 1 worker (THREADS=0)"),
                           (2, "Redis, 2 workers (THREADS=1 each)")]:
        print(f"  {label:45s} {measure(workers, args.jobs, args.model_dir, log_dir):.2f} jobs/s", flush=True)


if __name__ == "__main__":
    main()
