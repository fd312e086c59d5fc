"""End to end in real Chromium (Playwright driving the system's /usr/bin/chromium; never `playwright install`).

The page runs every image as a job (POST /api/jobs, then its status and result), so these tests see the tile
progress, the queue and Cancel as a person does, on desktop (1280 px) and phone (390 px) viewports.
Screenshots go to $SCREENSHOT_DIR if set (else the test's temporary folder): desktop.png, phone.png; the README
shows the committed ones (`SCREENSHOT_DIR=Code/Web_App/screenshots`).
"""
import base64
import io
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import astronaut, grace_hopper, require, run_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.slow
# bypass_csp: Playwright's wait_for_function evaluates strings, which the app's Content-Security-Policy forbids;
# test_no_console_errors loads the page with the policy in force
VIEWPORTS = {"desktop": dict(viewport={"width": 1280, "height": 900}, bypass_csp=True),
             "phone": dict(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, bypass_csp=True)}


@pytest.fixture(scope="module")
def browser():
    require(Path(CHROMIUM).exists(), "needs Chromium (apt-get install chromium; Code/ci_setup.sh does it)")
    from playwright import sync_api  # installed by requirements.txt
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def webapp_url():
    """The shipped models (as a user gets them), one worker and 128 px tiles, so that a x4 of a 640 px photo runs
    in 30 tiles: progress a person can see."""
    with run_server({"WORKERS": "1", "QUEUE": "4", "TILE": "128"}) as (base, _):
        yield base


@pytest.fixture
def shots(tmp_path) -> Path:
    d = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def screenshot(page, path: Path) -> None:
    """The whole page as a PNG of 256 colours (a few hundred KB, fit to commit)."""
    png = page.screenshot(full_page=True)
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(path, optimize=True)


def photo_file(folder: Path, name: str, size: tuple) -> Path:
    p = folder / name
    grace_hopper().resize(size).save(p, quality=92)
    return p


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("upload")
    return {"portrait": photo_file(d, "grace.jpg", (640, 752)), "big": photo_file(d, "big.jpg", (1200, 1400)),
            "small": photo_file(d, "small.jpg", (80, 94))}


def choose(page, path: Path, size: tuple):
    page.set_input_files("#file", str(path))
    page.wait_for_function("document.getElementById('input-size').textContent.includes('×')")
    assert f"{size[0]} × {size[1]} px" in page.text_content("#input-size")


def progress_value(page) -> float:
    return float(page.get_attribute("#progress-bar", "aria-valuenow") or 0)


def fully_in_view(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    height = page.viewport_size["height"]
    return box["y"] >= 0 and box["y"] + box["height"] <= height + 1


@pytest.mark.parametrize("device", ["desktop", "phone"])
def test_a_x4_job_shows_tile_progress_then_the_whole_result(browser, webapp_url, photos, shots, tmp_path, device):
    ctx = browser.new_context(**VIEWPORTS[device])
    page = ctx.new_page()
    posts = []
    page.on("request", lambda r: posts.append(r) if r.method == "POST" else None)
    page.goto(webapp_url)
    assert page.is_disabled("#enhance")
    choose(page, photos["portrait"], (640, 752))
    page.check("#scale4", force=True)
    page.fill("#strength", "0.8")
    assert "2560 × 3008 px" in page.text_content("#output-size")
    if device == "phone":                        # a WebP at a quality this time (the desktop keeps PNG)
        assert not page.is_visible("#quality")
        page.select_option("#format", "webp")
        page.fill("#quality", "80")
    # a double click must send once (the button is disabled as soon as the job starts)
    page.dblclick("#enhance")
    page.wait_for_function("(() => { const v = +document.getElementById('progress-bar').getAttribute('aria-valuenow');"
                           " return v > 0 && v < 100; })()", timeout=120_000)
    assert "tile" in page.text_content("#status") and page.is_visible("#cancel")
    page.wait_for_selector("#result:not([hidden])", timeout=180_000)
    page.wait_for_function("document.getElementById('after').complete")
    page.wait_for_timeout(300)
    assert [r.url.rsplit("/", 1)[-1] for r in posts] == ["jobs"]
    assert "2560 × 3008 px" in page.text_content("#result-size")
    assert not page.is_visible("#error") and not page.is_visible("#progress")
    assert fully_in_view(page, "#result") and fully_in_view(page, ".handle span")
    # transparent pixels would show a checkerboard, not black
    assert "conic-gradient" in page.evaluate("getComputedStyle(document.getElementById('compare')).backgroundImage")
    if device == "desktop":
        page.fill("#compare-slider", "30")
        page.dispatch_event("#compare-slider", "input")
        pos = "getComputedStyle(document.getElementById('compare')).getPropertyValue('--pos')"
        assert page.evaluate(pos).strip() == "30%"
        page.fill("#compare-slider", "50")
        page.dispatch_event("#compare-slider", "input")
        with page.expect_download() as dl:
            page.click("#download")
        saved = tmp_path / dl.value.suggested_filename
        dl.value.save_as(saved)
        assert saved.name == "grace_x4.png" and Image.open(saved).size == (2560, 3008)
    else:
        assert "WEBP" in page.text_content("#result-size") and page.text_content("#download") == "Download WEBP"
        assert page.get_attribute("#download", "download") == "grace_x4.webp"
        assert page.evaluate("document.documentElement.scrollWidth") <= 390     # nothing wider than the phone
        box = page.locator("#enhance").bounding_box()
        assert box["width"] > 300 and box["height"] >= 44                         # a thumb-sized button
    screenshot(page, shots / f"{device}.png")
    ctx.close()


def test_cancel_frees_the_worker(browser, webapp_url, photos):
    """Cancel a long x4 job part-way: the worker is free at once, and a small job then finishes promptly."""
    page = browser.new_page(**VIEWPORTS["desktop"])
    page.goto(webapp_url)
    choose(page, photos["big"], (1200, 1400))
    page.check("#scale4", force=True)
    page.click("#enhance")
    page.wait_for_function("+document.getElementById('progress-bar').getAttribute('aria-valuenow') > 0",
                           timeout=120_000)
    page.click("#cancel")
    page.wait_for_selector("#note:not([hidden])", timeout=30_000)
    assert page.text_content("#note") == "Cancelled." and not page.is_visible("#error")
    t = time.monotonic()
    while httpx.get(webapp_url + "/healthz").json()["running"]:
        assert time.monotonic() - t < 5, "the cancelled job kept the worker"
        time.sleep(0.05)
    choose(page, photos["small"], (80, 94))
    assert not page.is_visible("#note")
    t = time.monotonic()
    page.click("#enhance")
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)
    assert time.monotonic() - t < 10 and "320 × 376 px" in page.text_content("#result-size")
    page.close()


def test_a_fake_jpg_is_refused_before_enhance(browser, webapp_url, tmp_path):
    fake = tmp_path / "holiday.jpg"
    fake.write_bytes(b"this is text, not a picture\n" * 50)
    page = browser.new_page(**VIEWPORTS["desktop"])
    posts = []
    page.on("request", lambda r: posts.append(r) if r.method == "POST" else None)
    page.goto(webapp_url)
    page.set_input_files("#file", str(fake))
    page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    # the server's own words for such a file (superres.runtime.imaging)
    assert page.text_content("#error") == ("This file is not an image we can read. "
                                           "Use PNG, JPEG, WebP, GIF, BMP or TIFF.")
    assert page.is_disabled("#enhance") and page.text_content("#output-size") == ""
    assert not page.is_visible("#preview-box") and posts == []
    page.close()


def _dispatch_file_js(kind: str) -> str:
    """JS that builds a File from base64 and drops or pastes it onto the page."""
    target = "document.getElementById('drop')" if kind == "drop" else "document"
    event = ("new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})" if kind == "drop"
             else "new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true})")
    return f"""(b64) => {{
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'astro.png', {{type: 'image/png'}}));
        {target}.dispatchEvent({event});
    }}"""


@pytest.mark.parametrize("kind", ["drop", "paste"])
def test_drop_and_paste(browser, webapp_url, kind):
    buf = io.BytesIO()
    astronaut().resize((64, 48)).save(buf, "PNG")
    page = browser.new_page(**VIEWPORTS["desktop"])
    page.goto(webapp_url)
    page.evaluate(_dispatch_file_js(kind), base64.b64encode(buf.getvalue()).decode())
    page.wait_for_function("document.getElementById('input-size').textContent.includes('64 × 48')")
    assert page.is_enabled("#enhance")
    page.close()


def test_server_errors_in_plain_words(browser, webapp_url, tmp_path):
    """A file the page lets through (it starts like a TIFF, which browsers cannot preview) but the server cannot
    read: the server's message is shown, and Enhance is ready for another try."""
    fake = tmp_path / "scan.tif"
    fake.write_bytes(b"II*\x00" + b"not really a tiff" * 20)
    page = browser.new_page(**VIEWPORTS["desktop"])
    page.goto(webapp_url)
    page.set_input_files("#file", str(fake))
    page.wait_for_function("document.getElementById('input-size').textContent.includes('no preview')")
    page.click("#enhance")
    page.wait_for_selector("#error:not([hidden])", timeout=60_000)
    text = page.text_content("#error")
    assert ("not an image" in text or "damaged" in text) and "Traceback" not in text and "{" not in text
    assert page.is_enabled("#enhance")
    page.close()


def test_no_console_errors(browser, webapp_url, photos):
    """With the Content-Security-Policy in force: no 404 (favicon), no blocked script or style, no script error,
    through a whole enhancement."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(webapp_url)
    page.set_input_files("#file", str(photos["small"]))
    page.wait_for_selector("#enhance:not([disabled])")
    page.click("#enhance")
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    page.wait_for_load_state("networkidle")
    assert httpx.get(webapp_url + "/favicon.ico").status_code == 200
    assert errors == []
    page.close()
