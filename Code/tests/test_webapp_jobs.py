"""The jobs API and the result formats, against a real uvicorn server: every state and every error."""
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import astronaut, run_server
from test_imaging import _bytes, exif_rotated_jpeg, small_rgb, srgb_icc, truncated_png


@pytest.fixture(scope="module")
def server(untrained_model_dir):
    """One worker and small tiles (64 px: many progress steps); results kept 6 s, at most 3 MB of them."""
    env = {"MODEL_DIR": str(untrained_model_dir), "WORKERS": "1", "QUEUE": "8", "TILE": "64",
           "JOB_TTL_S": "6", "MAX_RESULTS_MB": "3"}
    with run_server(env) as (base, _):
        yield base


def photo(side: int) -> bytes:
    return _bytes(astronaut().resize((side, side)), "PNG")


def submit(base, data: bytes, **fields) -> dict:
    r = httpx.post(base + "/api/jobs", files={"file": ("astro.png", data)}, data={k: str(v) for k, v in fields.items()})
    assert r.status_code == 202, r.text
    return r.json()


def status(base, job) -> dict:
    r = httpx.get(base + job["status_url"])
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(base, job, states=("done", "failed", "cancelled"), timeout=120) -> list[dict]:
    """Poll until the job is in one of `states`; returns every status seen."""
    seen = [status(base, job)]
    deadline = time.monotonic() + timeout
    while seen[-1]["state"] not in states:
        assert time.monotonic() < deadline, seen[-1]
        time.sleep(0.05)
        seen.append(status(base, job))
    return seen


def test_a_job_from_queued_to_done_with_tile_progress(server):
    job = submit(server, photo(256), scale=2)
    assert len(job["id"]) >= 22 and job["status_url"] == f"/api/jobs/{job['id']}"
    assert job["result_url"] == job["status_url"] + "/result"
    seen = wait_for(server, job)
    final = seen[-1]
    assert final["state"] == "done" and final["progress"] == 1.0 and final["error"] is None
    assert final["tiles_done"] == final["tiles_total"] == 16 and final["queue_position"] == 0
    assert all(0 <= s["progress"] <= 1 for s in seen)
    r = httpx.get(server + job["result_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (512, 512)
    assert 'filename="astro_x2.png"' in r.headers["content-disposition"]


def test_ids_are_unguessable(server):
    ids = {submit(server, photo(32), scale=2)["id"] for _ in range(3)}
    assert len(ids) == 3 and all(len(i) >= 22 for i in ids)


def test_queue_position_result_before_done_and_cancel(server):
    """Two long jobs: the second waits (position 1); its result is 409; cancelling the queued one is immediate,
    cancelling the running one stops it at the next tile and frees the worker."""
    first = submit(server, photo(1000), scale=4)
    second = submit(server, photo(1000), scale=4)
    running = wait_for(server, first, ("running",))[-1]
    assert running["queue_position"] == 0
    s2 = status(server, second)
    assert s2["state"] == "queued" and s2["queue_position"] == 1 and s2["progress"] == 0
    r = httpx.get(server + first["result_url"])
    assert r.status_code == 409 and "running" in r.json()["error"]
    r = httpx.delete(server + second["status_url"])
    assert r.status_code == 200 and r.json()["state"] == "cancelled" and r.json()["queue_position"] == 0
    wait_for(server, first, ("running",))
    while status(server, first)["tiles_done"] < 2:
        time.sleep(0.05)
    r = httpx.delete(server + first["status_url"])
    assert r.status_code == 202
    t = time.monotonic()
    final = wait_for(server, first, timeout=30)[-1]
    assert final["state"] == "cancelled" and time.monotonic() - t < 5
    assert 0 < final["tiles_done"] < final["tiles_total"]                  # it stopped part-way
    r = httpx.get(server + first["result_url"])
    assert r.status_code == 409 and "cancelled" in r.json()["error"]
    small = submit(server, photo(48), scale=2)                             # the worker is free again
    assert wait_for(server, small, timeout=20)[-1]["state"] == "done"


def test_a_failed_job_says_why(server):
    job = submit(server, truncated_png(), scale=2)                         # the header is fine, the pixels not
    final = wait_for(server, job)[-1]
    assert final["state"] == "failed" and "damaged" in final["error"]
    r = httpx.get(server + job["result_url"])
    assert r.status_code == 409 and "damaged" in r.json()["error"]


@pytest.mark.parametrize("data,fields,status_code,words", [
    (b"just text", {}, 415, "not an image"),
    (photo(32), {"scale": 3}, 400, "scale"),
    (photo(32), {"format": "gif"}, 400, "format"),
    (photo(32), {"format": "jpeg", "quality": 0}, 400, "quality"),
    (photo(32), {"format": "webp", "quality": "high"}, 400, "quality"),
])
def test_bad_uploads_are_refused_before_a_job_exists(server, data, fields, status_code, words):
    r = httpx.post(server + "/api/jobs", files={"file": ("x.png", data)}, data={k: str(v) for k, v in fields.items()})
    assert r.status_code == status_code and words in r.json()["error"].lower()


def test_unknown_deleted_and_expired_jobs_are_404(server):
    for method in ("GET", "DELETE"):
        r = httpx.request(method, server + "/api/jobs/not-a-job")
        assert r.status_code == 404 and "no such job" in r.json()["error"]
    assert httpx.get(server + "/api/jobs/not-a-job/result").status_code == 404
    job = submit(server, photo(32), scale=2)
    wait_for(server, job)
    r = httpx.delete(server + job["status_url"])                            # a finished job is forgotten
    assert r.status_code == 200 and r.json()["state"] == "done"
    assert httpx.get(server + job["status_url"]).status_code == 404
    job = submit(server, photo(32), scale=2)
    wait_for(server, job)
    time.sleep(6.5)                                                         # JOB_TTL_S=6
    assert httpx.get(server + job["result_url"]).status_code == 404


def test_results_are_bounded_in_memory(server):
    """MAX_RESULTS_MB=3: a second 2 MB result pushes out the first; the newest is always kept."""
    noise = _bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (420, 420, 3), np.uint8)), "PNG")
    first = submit(server, noise, scale=2)
    wait_for(server, first)
    assert len(httpx.get(server + first["result_url"]).content) > 1.6e6
    second = submit(server, noise, scale=2)
    wait_for(server, second)
    assert httpx.get(server + first["status_url"]).status_code == 404
    assert httpx.get(server + second["result_url"]).status_code == 200


# ---- result formats (also on /api/enhance) -------------------------------------------------------------------
def enhance_as(base, data, **fields) -> httpx.Response:
    r = httpx.post(base + "/api/enhance", files={"file": ("p.png", data)}, data={k: str(v) for k, v in fields.items()},
                   timeout=120)
    assert r.status_code == 200, r.text
    return r


def test_formats_keep_icc_and_orientation(server):
    """PNG (default), lossless WebP (the same pixels), WebP and JPEG at a quality; the ICC profile travels in
    each, and an EXIF-rotated photo comes back upright (rotated pixels) in each."""
    icc = srgb_icc()
    data = _bytes(small_rgb(40, 30), "PNG", icc_profile=icc)
    png = enhance_as(server, data, scale=2)
    assert png.headers["content-type"] == "image/png"
    reference = np.asarray(Image.open(io.BytesIO(png.content)))
    for fields, media, ext in [({"format": "webp"}, "image/webp", "webp"),
                               ({"format": "webp", "quality": 80}, "image/webp", "webp"),
                               ({"format": "jpeg", "quality": 90}, "image/jpeg", "jpg"),
                               ({"format": "jpg"}, "image/jpeg", "jpg")]:
        r = enhance_as(server, data, scale=2, **fields)
        assert r.headers["content-type"] == media and f'_x2.{ext}"' in r.headers["content-disposition"]
        out = Image.open(io.BytesIO(r.content))
        assert out.size == (80, 60) and out.info.get("icc_profile") == icc
        pixels = np.asarray(out.convert("RGB")).astype(int)
        if "quality" not in fields and media == "image/webp":
            assert np.array_equal(pixels, reference)                        # lossless
        else:
            assert np.abs(pixels - reference).mean() < 6
    for fmt in ("png", "webp", "jpeg"):
        r = enhance_as(server, exif_rotated_jpeg(), scale=2, format=fmt)
        assert Image.open(io.BytesIO(r.content)).size == (60, 80)


def test_job_results_in_other_formats(server):
    job = submit(server, photo(40), scale=2, format="webp", quality=70)
    wait_for(server, job)
    r = httpx.get(server + job["result_url"])
    assert r.headers["content-type"] == "image/webp" and Image.open(io.BytesIO(r.content)).format == "WEBP"


def test_favicon(server):
    r = httpx.get(server + "/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"] == "image/x-icon"
    assert Image.open(io.BytesIO(r.content)).format == "ICO"


def test_a_full_queue_answers_429(server):
    """WORKERS=1 + QUEUE=8 jobs admitted; the next one is refused at once, and cancelling them all frees it."""
    big = photo(1000)
    jobs = [submit(server, big, scale=4) for _ in range(9)]
    r = httpx.post(server + "/api/jobs", files={"file": ("x.png", photo(32))})
    assert r.status_code == 429 and "busy" in r.json()["error"] and r.headers["retry-after"]
    for job in jobs:
        assert httpx.delete(server + job["status_url"]).status_code in (200, 202)
    assert all(wait_for(server, job, timeout=30)[-1]["state"] == "cancelled" for job in jobs)
    deadline = time.monotonic() + 10
    while httpx.get(server + "/healthz").json()["waiting"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wait_for(server, submit(server, photo(32), scale=2))[-1]["state"] == "done"
