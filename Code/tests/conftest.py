"""Shared fixtures. Real photos come from packages (scikit-image's astronaut, matplotlib's Grace Hopper);
data from ../shared/data is used only where present (CI has it) and never copied into the repo."""
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
IN_CI = __import__("os").environ.get("CI", "").lower() == "true"


def require(ok: bool, reason: str) -> None:
    """Skip with `reason` where the machine lacks something a test needs; under CI=true fail instead, since CI
    installs all of it (Code/ci_setup.sh) and a green run must mean the test ran."""
    if not ok:
        if IN_CI:
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, which CI has; elsewhere the tests that use it skip."""
    require(SHARED_DATA.is_dir(), "needs ../shared/data (present in CI)")
    return SHARED_DATA


def astronaut() -> Image.Image:
    from skimage import data
    return Image.fromarray(data.astronaut())


def grace_hopper() -> Image.Image:
    import matplotlib.cbook as cbook
    return Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")


@pytest.fixture(scope="session")
def sample_photos(tmp_path_factory) -> Path:
    """A folder with two real portraits that packages ship."""
    from superres.writeup.samples import sample_photos as write_samples
    return write_samples(tmp_path_factory.mktemp("photos"))


# ---- model folder, ports and a running web app (inference, enhance, web app tests) -------------------
import contextlib  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402


@pytest.fixture(scope="session")
def untrained_model_dir(tmp_path_factory) -> Path:
    """A complete, valid model folder with random weights (superres.training.export.export_untrained, ~7 s)."""
    from superres.training.export import export_untrained
    out = tmp_path_factory.mktemp("untrained_model")
    export_untrained(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200; fail early if `proc` exits."""
    import httpx
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def run_server(env: dict | None = None, args: tuple = (), timeout: float = 90):
    """`python -m superres serve` (real uvicorn) on a free port in a subprocess; yields (base_url, Popen).

    The server's output goes to the file `Popen.log_path`; if it does not come up, the failure includes it."""
    port = free_port()
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    for key in ("HOST", "PORT"):
        full_env.pop(key, None)
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"superres-serve-{port}.log"
    with open(log_path, "w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "superres", "serve", "--host", "127.0.0.1",
                                 "--port", str(port), *args], env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=REPO)
        proc.log_path = log_path
        base = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_http(base + "/healthz", timeout, proc)
            except Exception as e:
                log.seek(0)
                raise RuntimeError(f"the web app did not start ({e}); its output:\n{log.read()}") from e
            yield base, proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def webapp_url(untrained_model_dir) -> str:
    """Base URL of a real uvicorn server running the web app on the untrained model folder."""
    with run_server({"MODEL_DIR": str(untrained_model_dir), "WORKERS": "1", "QUEUE": "16"}) as (base, _):
        yield base


# ---- a real redis-server and `superres worker` processes (the Redis job queue, test_redis_queue.py) ----------
class RedisServer:
    """`redis-server` on a free loopback port, no persistence; `stop()` and `start()` again keep the port (an
    empty Redis comes back, as after a restart). Under CI=true a missing redis-server fails the test."""

    def __init__(self):
        import shutil
        require(shutil.which("redis-server") is not None, "needs redis-server (apt-get install redis-server)")
        self.port, self.proc = free_port(), None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        import redis
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="module")
def redis_server():
    """A redis-server of the test module's own (RedisServer)."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def run_worker(env: dict | None = None, args: tuple = ()):
    """`python -m superres worker` in a subprocess (its output in the file `Popen.log_path`); yields the Popen. It is
    stopped (SIGTERM, then SIGKILL) on leaving, unless it has already exited."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"superres-worker-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "superres", "worker", *args], env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=REPO)
    proc.log_path = log_path
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
