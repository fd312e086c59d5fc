"""The web app's API against a real uvicorn server (python -m superres serve in a subprocess)."""
import asyncio
import functools
import hashlib
import http.server
import io
import os
import shutil
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, astronaut, free_port, grace_hopper, run_server, wait_http
from test_imaging import (
    _bytes,
    animated_gif,
    bomb_png,
    cmyk_jpeg,
    exif_rotated_jpeg,
    gray16_png,
    palette_with_transparency,
    small_rgb,
    truncated_png,
    zip_bytes,
)


def post(base, data: bytes | None, filename="photo.png", timeout=300, **fields):
    files = {"file": (filename, data, "application/octet-stream")} if data is not None else None
    return httpx.post(base + "/api/enhance", files=files, data={k: str(v) for k, v in fields.items()},
                      timeout=timeout)


def png_of(resp) -> Image.Image:
    assert resp.headers["content-type"] == "image/png", resp.text[:300]
    return Image.open(io.BytesIO(resp.content))


def test_healthz(webapp_url):
    t = time.perf_counter()
    r = httpx.get(webapp_url + "/healthz")
    assert time.perf_counter() - t < 1
    j = r.json()
    assert r.status_code == 200 and j["status"] == "ok" and j["models_loaded"] is True
    assert j["version"] and j["model"]["scales"] == [2, 4] and j["model"]["untrained"] is True


def test_page_and_static(webapp_url):
    r = httpx.get(webapp_url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "Portrait Super-Resolution" in r.text
    assert httpx.get(webapp_url + "/static/app.css").status_code == 200


def test_enhance_x4_default(webapp_url):
    r = post(webapp_url, _bytes(astronaut().resize((96, 80)), "PNG"), filename="astronaut.png")
    assert r.status_code == 200
    out = png_of(r)
    assert out.size == (384, 320) and out.mode == "RGB"
    assert r.headers["x-output-size"] == "384x320" and r.headers["x-input-size"] == "96x80"
    assert 'filename="astronaut_x4.png"' in r.headers["content-disposition"]


def test_enhance_x2_jpeg_portrait(webapp_url):
    img = grace_hopper().resize((100, 117))
    r = post(webapp_url, _bytes(img, "JPEG", quality=92), filename="grace.jpg", scale=2, strength=0)
    out = png_of(r)
    assert out.size == (200, 234)
    back = np.asarray(out.resize(img.size, Image.Resampling.BOX)).astype(int)
    assert np.abs(back - np.asarray(img).astype(int)).mean() < 8      # it is the same picture, bigger


# (name, bytes factory, form fields, expected status, expected PNG mode and size, or error words)
TABLE = [
    ("empty", lambda: b"", {}, 400, "empty"),
    ("text", lambda: b"just some text\n" * 20, {}, 415, "not an image"),
    ("html", lambda: b"<!doctype html><html><script>alert(1)</script></html>", {}, 415, "not an image"),
    ("zip", zip_bytes, {}, 415, "not an image"),
    ("truncated", truncated_png, {"scale": 2}, 400, "damaged"),
    ("bomb", bomb_png, {}, 413, "megapixels"),
    ("cmyk", cmyk_jpeg, {"scale": 2}, 200, ("RGB", (80, 60))),
    ("gray16", gray16_png, {"scale": 2}, 200, ("L", (128, 16))),
    ("palette", lambda: _bytes(small_rgb().convert("P"), "PNG"), {"scale": 2}, 200, ("RGB", (80, 60))),
    ("palette_transparent", palette_with_transparency, {"scale": 2}, 200, ("RGBA", (32, 32))),
    ("rgba", lambda: _bytes(small_rgb().convert("RGBA"), "PNG"), {"scale": 2}, 200, ("RGBA", (80, 60))),
    ("exif_rotated", exif_rotated_jpeg, {"scale": 2}, 200, ("RGB", (60, 80))),
    ("animated_gif", animated_gif, {"scale": 4}, 200, ("RGB", (80, 40))),
    ("webp", lambda: _bytes(small_rgb(), "WEBP"), {"scale": 2}, 200, ("RGB", (80, 60))),
    ("bmp", lambda: _bytes(small_rgb(), "BMP"), {"scale": 2}, 200, ("RGB", (80, 60))),
    ("tiff", lambda: _bytes(small_rgb(), "TIFF"), {"scale": 2}, 200, ("RGB", (80, 60))),
    ("scale_empty_means_4", lambda: _bytes(small_rgb(), "PNG"), {"scale": ""}, 200, ("RGB", (160, 120))),
    ("scale_3", lambda: _bytes(small_rgb(), "PNG"), {"scale": 3}, 400, "scale"),
    ("scale_8", lambda: _bytes(small_rgb(), "PNG"), {"scale": 8}, 400, "scale"),
    ("scale_0", lambda: _bytes(small_rgb(), "PNG"), {"scale": 0}, 400, "scale"),
    ("scale_negative", lambda: _bytes(small_rgb(), "PNG"), {"scale": -4}, 400, "scale"),
    ("scale_float", lambda: _bytes(small_rgb(), "PNG"), {"scale": "2.0"}, 400, "scale"),
    ("scale_word", lambda: _bytes(small_rgb(), "PNG"), {"scale": "four"}, 400, "scale"),
    ("strength_big", lambda: _bytes(small_rgb(), "PNG"), {"strength": 1.5}, 400, "strength"),
    ("strength_negative", lambda: _bytes(small_rgb(), "PNG"), {"strength": -0.1}, 400, "strength"),
    ("strength_nan", lambda: _bytes(small_rgb(), "PNG"), {"strength": "nan"}, 400, "strength"),
    ("strength_word", lambda: _bytes(small_rgb(), "PNG"), {"strength": "sharp"}, 400, "strength"),
    ("strength_edges", lambda: _bytes(small_rgb(), "PNG"), {"strength": 1, "scale": 2}, 200, ("RGB", (80, 60))),
    ("no_file", lambda: None, {"scale": 2}, 400, "file"),
]


@pytest.mark.parametrize("name,make,fields,status,expected", TABLE, ids=[t[0] for t in TABLE])
def test_bad_and_odd_inputs(webapp_url, name, make, fields, status, expected):
    r = post(webapp_url, make(), **fields)
    assert r.status_code == status, r.text[:300]
    if status == 200:
        out = png_of(r)
        assert (out.mode, out.size) == expected
    else:
        assert r.headers["content-type"] == "application/json"
        message = r.json()["error"]
        assert expected in message.lower() and "Traceback" not in message


def test_not_multipart_and_wrong_methods(webapp_url):
    r = httpx.post(webapp_url + "/api/enhance", json={"file": "x"})
    assert r.status_code == 400 and "multipart" in r.json()["error"]
    r = httpx.post(webapp_url + "/api/enhance", content=b"--x\r\ngarbage",
                   headers={"content-type": "multipart/form-data; boundary=x"})
    assert 400 <= r.status_code < 500 and "error" in r.json()
    assert httpx.get(webapp_url + "/api/enhance").status_code == 405
    r = httpx.get(webapp_url + "/nowhere")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}


def test_file_field_as_text(webapp_url):
    r = httpx.post(webapp_url + "/api/enhance", files={"scale": (None, "2")}, data={"file": "hello"})
    assert r.status_code == 400 and "file" in r.json()["error"]


@pytest.fixture(scope="module")
def strict_server(untrained_model_dir):
    """Tight limits and no queue: one request at a time, anything more gets 429."""
    env = {"MODEL_DIR": str(untrained_model_dir), "MAX_UPLOAD_MB": "0.2", "MAX_INPUT_MP": "0.05",
           "MAX_OUTPUT_MP": "0.3", "WORKERS": "1", "QUEUE": "0"}
    with run_server(env) as (base, _):
        yield base


def test_limits(strict_server):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8))
    r = post(strict_server, _bytes(noise, "PNG"))                 # ~270 KB > 0.2 MB
    assert r.status_code == 413 and "MB" in r.json()["error"]
    r = post(strict_server, _bytes(small_rgb(300, 200), "JPEG"))  # 0.06 MP > 0.05
    assert r.status_code == 413 and "megapixels" in r.json()["error"]
    r = post(strict_server, _bytes(small_rgb(200, 200), "PNG"), scale=4)   # 0.64 MP out > 0.3
    assert r.status_code == 413 and "Choose ×2" in r.json()["error"]
    assert post(strict_server, _bytes(small_rgb(200, 200), "PNG"), scale=2).status_code == 200
    # at the limit and not square: padding makes it cost 14% more than a square image, which is no reason to refuse
    assert post(strict_server, _bytes(small_rgb(200, 250), "PNG"), scale=2).status_code == 200


def test_busy_answers_429(strict_server):
    data = _bytes(small_rgb(220, 220), "PNG")

    async def main():
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(*[client.post(strict_server + "/api/enhance", files={"file": ("a.png", data)},
                                                      data={"scale": "2"}) for _ in range(4)])
    codes = sorted(r.status_code for r in asyncio.run(main()))
    assert codes[0] == 200 and codes[-1] == 429
    busy = [r for r in asyncio.run(main()) if r.status_code == 429]
    assert all("busy" in r.json()["error"] and r.headers.get("retry-after") for r in busy)


@pytest.mark.slow
def test_concurrent_load(webapp_url):
    """8 large requests at once: all answered, none mixed up, /healthz quick all the while."""
    rng = np.random.default_rng(1)
    base = np.asarray(astronaut().resize((384, 384)))
    jobs = []
    for i in range(8):
        w, h = 384 - 32 * (i % 4), 384 - 16 * i              # every request has its own size and colour cast
        img = np.clip(base[:h, :w].astype(int) + rng.integers(-60, 60, 3), 0, 255).astype(np.uint8)
        jobs.append((img, 2 if i % 2 else 4))
    health_times = []

    async def main():
        async with httpx.AsyncClient(timeout=900) as client:
            async def one(img, scale):
                return await client.post(webapp_url + "/api/enhance",
                                         files={"file": ("x.png", _bytes(Image.fromarray(img), "PNG"))},
                                         data={"scale": str(scale)})

            async def poll(done):
                await asyncio.sleep(1)
                while not done.is_set():
                    t = time.perf_counter()
                    r = await client.get(webapp_url + "/healthz", timeout=10)
                    health_times.append((time.perf_counter() - t, r.json()["running"] + r.json()["waiting"]))
                    await asyncio.sleep(0.5)
            done = asyncio.Event()
            poller = asyncio.create_task(poll(done))
            results = await asyncio.gather(*[one(img, s) for img, s in jobs])
            done.set()
            await poller
            return results
    results = asyncio.run(main())
    for (img, scale), r in zip(jobs, results, strict=True):
        assert r.status_code == 200, r.text[:300]
        out = png_of(r)
        h, w = img.shape[:2]
        assert out.size == (w * scale, h * scale)
        back = np.asarray(out.resize((w, h), Image.Resampling.BOX)).astype(int)
        assert np.abs(back - img.astype(int)).mean() < 8          # its own picture, not another request's
    assert max(t for t, _ in health_times) < 1.0, health_times
    assert max(n for _, n in health_times) >= 4                   # healthz was polled while work was queued


# ---- start-up: models from a URL, missing models, HOST/PORT ------------------------------------------------
@pytest.fixture(scope="module")
def archive_server(untrained_model_dir, tmp_path_factory):
    """A local HTTP server with a good and a tampered model archive."""
    root = tmp_path_factory.mktemp("www")
    shutil.make_archive(str(root / "model"), "zip", untrained_model_dir)
    bad = tmp_path_factory.mktemp("bad") / "model"
    shutil.copytree(untrained_model_dir, bad)
    with open(bad / "x4_gan.onnx", "ab") as f:
        f.write(b"tampered")
    shutil.make_archive(str(root / "tampered"), "gztar", bad.parent, "model")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_model_url_fetched_and_checked(archive_server, tmp_path):
    digest = hashlib.sha256(httpx.get(archive_server + "/model.zip").content).hexdigest()
    env = {"MODEL_URL": archive_server + "/model.zip", "MODEL_DIR": str(tmp_path / "unused"),
           "MODEL_CACHE": str(tmp_path / "cache"), "MODEL_SHA256": digest}
    with run_server(env) as (base, _):
        assert httpx.get(base + "/healthz").json()["models_loaded"] is True
        assert post(base, _bytes(small_rgb(), "PNG"), scale=2).status_code == 200


def serve_fails(env, *args) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-m", "superres", "serve", "--port", str(free_port()), *args],
                          env=full, capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize("path,env,words", [
    ("/tampered.tar.gz", {"MODEL_SHA256": "skip"}, "does not match its model card"),
    ("/missing.zip", {"MODEL_SHA256": "skip"}, "HTTP 404"),
    ("/model.zip", {}, "MODEL_URL needs MODEL_SHA256"),                    # no checksum: refused
    ("/model.zip", {"MODEL_SHA256": "0" * 64}, "not MODEL_SHA256"),
    ("/model.zip", {"MODEL_SHA256": "skip", "MODEL_MAX_MB": "0.5"}, "MB limit (MODEL_MAX_MB)"),
])
def test_model_url_failures_are_clear(archive_server, tmp_path, path, env, words):
    res = serve_fails({"MODEL_URL": archive_server + path, "MODEL_CACHE": str(tmp_path), **env})
    assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr
    assert [p.name for p in tmp_path.iterdir()] == []                       # nothing left behind


def test_missing_models_stop_the_server_with_a_clear_message(tmp_path):
    res = serve_fails({"MODEL_DIR": str(tmp_path / "none")})
    assert res.returncode == 2 and "No model found" in res.stderr and "Traceback" not in res.stderr
    res = serve_fails({"WORKERS": "many"})
    assert res.returncode == 2 and "WORKERS" in res.stderr


def test_host_and_port_from_environment(untrained_model_dir):
    port = free_port()
    env = {**os.environ, "MODEL_DIR": str(untrained_model_dir), "HOST": "127.0.0.1", "PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "superres", "serve"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 90, proc)
    finally:
        proc.terminate()
        proc.wait(10)
