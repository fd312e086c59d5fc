"""python -m superres worker: run the jobs that `superres serve` web processes put on Redis (REDIS_URL).

    REDIS_URL=redis://127.0.0.1:6379/0 python -m superres worker              # one worker process
    REDIS_URL=redis://127.0.0.1:6379/0 python -m superres worker --workers 2  # two (or more hosts / containers)

A worker loads the model folder once (MODEL_DIR or MODEL_URL, as `serve` does), then takes one job at a time,
reports its tile progress, stops it at its next tile when it is cancelled or passes the time limit of the web process
that accepted it (JOB_TIMEOUT_S there), and heartbeats every WORKER_HEARTBEAT_S, which /healthz counts. SIGTERM or
SIGINT: the job at hand is finished first (a second one stops at once). `--workers N` starts N such processes, each
with THREADS (default: the cores shared out among them), and starts again one that dies. Redis unreachable at
start: one line and exit 2; lost later: the worker waits for it. The queue itself: superres.runtime.redis_jobs.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time


def add_arguments(p):
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: $WORKERS or 1)")
    p.add_argument("--model-dir", default=None, help="model folder (default: $MODEL_DIR or the shipped models)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args) -> int:
    from superres.runtime import redis_jobs
    from superres.runtime.inference import ModelError, available_cores
    from superres.runtime.jobs import Unavailable
    from superres.runtime.serve import load_settings
    loaded = load_settings(args)     # the web app's settings: the same environment variables
    if loaded is None:
        return 2
    webapp, settings = loaded
    if not settings.redis_url:
        print("error: set REDIS_URL (e.g. redis://127.0.0.1:6379/0): a worker takes its jobs from Redis",
              file=sys.stderr)
        return 2
    n = args.workers or settings.workers
    if n < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        conn = redis_jobs.connect(settings.redis_url)
        if n > 1:
            conn.close()
            return supervise(n, args, settings.threads or max(1, available_cores() // n))
        enhancer = asyncio.run(webapp.load_models(settings))
    except (Unavailable, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"worker {os.getpid()} taking jobs from {redis_jobs.safe_url(settings.redis_url)} "
          f"(models: {enhancer.model_dir})", flush=True)
    return redis_jobs.work(conn, enhancer, settings.worker_heartbeat_s, args.log_level.upper())


def supervise(n: int, args, threads: int) -> int:
    """Run `n` one-worker processes; start again one that dies (a first one that exits 2, a setting or the model
    folder, stops them all); forward SIGTERM/SIGINT and wait for them all."""
    cmd = [sys.executable, "-m", "superres", "worker", "--workers", "1", "--log-level", args.log_level]
    if args.model_dir:
        cmd += ["--model-dir", args.model_dir]
    env = {**os.environ, "THREADS": str(threads)}
    procs = [subprocess.Popen(cmd, env=env) for _ in range(n)]
    first = [True] * n
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        for i, p in enumerate(procs):
            rc = p.poll()
            if rc is None or stopping:
                continue
            if rc == 2 and first[i]:                   # the others fail alike
                stop(signal.SIGTERM, None)
                for q in procs:
                    q.wait()
                return 2
            print(f"worker process {p.pid} exited ({rc}); starting another", file=sys.stderr, flush=True)
            procs[i], first[i] = subprocess.Popen(cmd, env=env), False
            time.sleep(1)
        if stopping and all(p.poll() is not None for p in procs):
            return 0
        time.sleep(0.5)
