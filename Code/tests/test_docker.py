"""The user's commands: `docker build -t srwebapp .` and `docker run -p 5000:5000 srwebapp`, then an HTTP enhance.

Runs where a Docker engine answers (Code/ci_setup.sh starts one and builds a local python:3.11-slim stand-in
when Docker Hub is unreachable); skips with the reason elsewhere, and fails under CI=true. The container runs detached
(`-d`, not `-it`: tests have no TTY) on a free host port mapped to the container's 5000."""
import io
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import REPO, astronaut, free_port, require

IMAGE = "srwebapp"
pytestmark = pytest.mark.slow


def docker(*args, timeout=120, check=True) -> subprocess.CompletedProcess:
    res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and res.returncode:
        raise AssertionError(f"docker {' '.join(args)} failed ({res.returncode}):\n"
                             f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


@pytest.fixture(scope="module")
def built_image():
    require(shutil.which("docker") is not None, "no docker CLI on this machine (Code/ci_setup.sh installs docker.io)")
    require(subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0,
            "no Docker engine answers (Code/ci_setup.sh starts dockerd as root)")
    require(docker("image", "inspect", "python:3.11-slim", check=False).returncode == 0,
            "the base image python:3.11-slim is not available (Code/ci_setup.sh builds a local stand-in)")
    t = time.perf_counter()
    res = subprocess.run(["docker", "build", "-t", IMAGE, "."], cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, f"docker build failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    size = int(docker("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout.strip())
    print(f"\ndocker build: {time.perf_counter() - t:.0f} s, image size {size / 1e6:.0f} MB")
    return size


def has_default_models() -> bool:
    return (REPO / "Code" / "superres" / "default_model" / "model_card.json").is_file()


def readable_copy(model_dir: Path) -> Path:
    """The container runs as a non-root user; pytest's temporary folders are private (0700)."""
    dest = Path(tempfile.mkdtemp(prefix="srmodel-"))
    shutil.copytree(model_dir, dest, dirs_exist_ok=True)
    dest.chmod(0o755)
    for p in dest.iterdir():
        p.chmod(0o644)
    return dest


def test_image_is_small_and_has_no_torch_or_onnx(built_image):
    assert built_image < 1.5e9, f"image is {built_image / 1e9:.2f} GB"
    res = docker("run", "--rm", IMAGE, "python", "-c",
                 "import importlib.util as u, sys; bad = [m for m in ('torch', 'fastai', 'onnx') if u.find_spec(m)]; "
                 "print(bad); sys.exit(1 if bad else 0)")
    assert res.stdout.strip() == "[]"


def test_docker_run_and_enhance(built_image, untrained_model_dir):
    port, name = free_port(), f"srwebapp-test-{uuid.uuid4().hex[:8]}"
    args = ["run", "--rm", "-d", "--name", name, "-p", f"{port}:5000"]
    model = None
    if not has_default_models():          # until the trained models are committed, mount the untrained ones
        model = readable_copy(untrained_model_dir)
        args += ["-v", f"{model}:/models:ro", "-e", "MODEL_DIR=/models"]
    docker(*args, IMAGE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).json().get("models_loaded"):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline or name not in docker("ps", "--format", "{{.Names}}").stdout:
                logs = docker("logs", name, check=False).stderr[-3000:]
                raise AssertionError("the container did not come up:\n" + logs)
            time.sleep(0.5)
        assert "Portrait Super-Resolution" in httpx.get(base + "/").text
        buf = io.BytesIO()
        astronaut().resize((128, 128)).save(buf, "PNG")
        t = time.perf_counter()
        r = httpx.post(base + "/api/enhance", files={"file": ("astronaut.png", buf.getvalue(), "image/png")},
                       data={"scale": "4"}, timeout=300)
        assert r.status_code == 200, r.text[:300]
        assert Image.open(io.BytesIO(r.content)).size == (512, 512)
        print(f"\ncontainer x4 of 128x128: {time.perf_counter() - t:.2f} s end to end")
        r = httpx.post(base + "/api/enhance", files={"file": ("notes.txt", b"not an image")}, timeout=60)
        assert r.status_code == 415 and "error" in r.json()
    finally:
        docker("stop", "-t", "5", name, check=False)
        if model:
            shutil.rmtree(model, ignore_errors=True)


def test_docker_without_models_says_so(built_image):
    """A MODEL_DIR that holds no model stops the container at once with the reason, not a traceback."""
    res = docker("run", "--rm", "-e", "MODEL_DIR=/nonexistent", IMAGE, timeout=120, check=False)
    assert res.returncode == 2
    assert "No model found" in res.stderr and "Traceback" not in res.stderr
