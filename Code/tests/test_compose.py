"""The user's `docker compose up --build` of compose.yaml: the page on :5000, its jobs on Redis, run by two workers.

Runs the project's compose.yaml itself (under a project name of its own, so nothing of a user's stack is touched)
where a Docker engine and Compose answer: `docker compose` (v2) or Debian's `docker-compose` 1.29 (with
--compatibility, which v1 needs for `deploy.replicas`). Code/ci_setup.sh installs docker-compose and, with Docker Hub
unreachable, builds local stand-ins for python:3.11-slim and redis:7. Skips with the reason elsewhere; fails under
CI=true. The web service publishes the host's port 5000 (an override file could only add ports, not replace that one),
so the test needs :5000 free. The stack is always taken down (`down -v --remove-orphans`)."""
import io
import shutil
import socket
import subprocess
import time
import uuid

import httpx
import pytest
from PIL import Image

from conftest import REPO, astronaut, require
from test_docker import docker

pytestmark = pytest.mark.slow
BASE = "http://127.0.0.1:5000"


def compose_cli() -> list[str] | None:
    """`docker compose` (v2) where it works, else `docker-compose --compatibility` (v1), else None."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) and subprocess.run([*cmd, "version"], capture_output=True, timeout=60).returncode == 0:
            return cmd if cmd[0] == "docker" else [*cmd, "--compatibility"]
    return None


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def healthz() -> dict:
    try:
        r = httpx.get(BASE + "/healthz", timeout=3)
        return r.json() if r.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}


def test_compose_serves_the_page_with_redis_and_two_workers():
    require(shutil.which("docker") is not None, "no docker CLI on this machine (Code/ci_setup.sh installs docker.io)")
    require(subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0,
            "no Docker engine answers (Code/ci_setup.sh starts dockerd as root)")
    cli = compose_cli()
    require(cli is not None, "neither `docker compose` nor docker-compose works (Code/ci_setup.sh installs it)")
    for image in ("python:3.11-slim", "redis:7"):
        require(docker("image", "inspect", image, check=False).returncode == 0,
                f"the image {image} is not available (Code/ci_setup.sh builds a local stand-in)")
    require(port_free(5000), "port 5000 is busy (compose.yaml publishes the web app on it)")
    compose = [*cli, "-p", f"srtest{uuid.uuid4().hex[:8]}", "-f", str(REPO / "compose.yaml")]

    def run(*args, timeout=120, check=True) -> subprocess.CompletedProcess:
        res = subprocess.run([*compose, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode:
            raise AssertionError(f"{' '.join(compose + list(args))} failed ({res.returncode}):\n"
                                 f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        return res

    t0 = time.perf_counter()
    try:
        run("up", "-d", "--build", timeout=1500)
        t_up = time.perf_counter() - t0
        deadline, health = time.monotonic() + 180, {}
        while not (health.get("backend") == "redis" and health.get("workers") == 2):
            if time.monotonic() > deadline:
                logs = run("logs", "--no-color", "--tail", "40", check=False)
                raise AssertionError(f"no /healthz with backend redis and 2 live workers in 180 s (last: {health}):\n"
                                     f"{run('ps', check=False).stdout}\n{logs.stdout[-6000:]}{logs.stderr[-2000:]}")
            time.sleep(1)
            health = healthz()
        assert health["status"] == "ok" and health["models_loaded"]
        ps = run("ps", "-q", "worker").stdout.split()
        assert len(ps) == 2, f"expected 2 worker containers, got {ps}"
        assert "Portrait Super-Resolution" in httpx.get(BASE + "/", timeout=10).text

        buf = io.BytesIO()
        astronaut().resize((64, 64)).save(buf, "PNG")
        t = time.perf_counter()
        r = httpx.post(BASE + "/api/jobs", files={"file": ("astronaut.png", buf.getvalue(), "image/png")},
                       data={"scale": "4"}, timeout=60)
        assert r.status_code == 202, r.text[:300]
        job = r.json()
        deadline = time.monotonic() + 120
        while (state := httpx.get(BASE + job["status_url"], timeout=10).json())["state"] not in (
                "done", "failed", "cancelled"):
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        assert state["state"] == "done", state
        r = httpx.get(BASE + job["result_url"], timeout=60)
        assert r.status_code == 200
        assert Image.open(io.BytesIO(r.content)).size == (256, 256)
        print(f"\ncompose up --build: {t_up:.0f} s; healthy with 2 workers after {time.perf_counter() - t0:.0f} s; "
              f"x4 job of 64x64 through Redis: {time.perf_counter() - t:.2f} s")
    finally:
        run("down", "-v", "--remove-orphans", timeout=180, check=False)
