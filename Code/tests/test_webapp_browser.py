"""End to end in real Chromium (Playwright driving the system's /usr/bin/chromium; never `playwright install`).

Screenshots go to $SCREENSHOT_DIR if set (else the test's temporary folder): desktop.png, phone.png."""
import base64
import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import astronaut, grace_hopper, require

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    require(Path(CHROMIUM).exists(), "needs Chromium (apt-get install chromium; Code/ci_setup.sh does it)")
    from playwright import sync_api   # installed by requirements.txt
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    d = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def portrait_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("upload") / "grace.jpg"
    grace_hopper().resize((160, 188)).save(p, quality=92)
    return p


def enhance_flow(page, url, portrait_file, scale):
    requests = []
    page.on("request", lambda r: requests.append(r) if r.url.endswith("/api/enhance") else None)
    page.goto(url)
    assert page.is_disabled("#enhance")
    page.set_input_files("#file", str(portrait_file))
    page.wait_for_function("document.getElementById('input-size').textContent.includes('×')")
    assert "160 × 188 px" in page.text_content("#input-size")
    page.check(f"#scale{scale}", force=True)
    page.fill("#strength", "0.8")
    assert f"{160 * scale} × {188 * scale} px" in page.text_content("#output-size")
    # a double click must send once; two separate clicks raced the server, which now answers a small x2 in
    # ~50 ms and so could re-enable the button (rightly) before the second click
    page.dblclick("#enhance")
    page.wait_for_selector("#result:not([hidden])", timeout=180_000)
    assert len(requests) == 1
    assert f"{160 * scale} × {188 * scale} px" in page.text_content("#result-size")
    assert not page.is_visible("#error")
    return page


def test_desktop_select_enhance_compare_download(browser, webapp_url, portrait_file, shots, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    enhance_flow(page, webapp_url, portrait_file, 4)
    # the comparison slider moves the split
    page.fill("#compare-slider", "30")
    page.dispatch_event("#compare-slider", "input")
    assert page.evaluate("getComputedStyle(document.getElementById('compare')).getPropertyValue('--pos')").strip() == "30%"
    page.fill("#compare-slider", "50")
    page.dispatch_event("#compare-slider", "input")
    with page.expect_download() as dl:
        page.click("#download")
    saved = tmp_path / dl.value.suggested_filename
    dl.value.save_as(saved)
    assert saved.name == "grace_x4.png"
    assert Image.open(saved).size == (640, 752)
    page.wait_for_timeout(600)                                       # let the smooth scroll settle
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shots / "desktop.png"), full_page=True)
    page.close()


def test_phone_layout(browser, webapp_url, portrait_file, shots):
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = ctx.new_page()
    enhance_flow(page, webapp_url, portrait_file, 2)
    page.wait_for_timeout(600)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390     # nothing wider than the phone
    box = page.locator("#enhance").bounding_box()
    assert box["width"] > 300 and box["height"] >= 44                         # a thumb-sized button
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shots / "phone.png"), full_page=True)
    ctx.close()


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
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.goto(webapp_url)
    page.evaluate(_dispatch_file_js(kind), base64.b64encode(buf.getvalue()).decode())
    page.wait_for_function("document.getElementById('input-size').textContent.includes('64 × 48')")
    assert page.is_enabled("#enhance")
    page.close()


def test_errors_in_plain_words(browser, webapp_url, tmp_path):
    fake = tmp_path / "holiday.png"
    fake.write_bytes(b"this is text, not a picture\n" * 50)
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.goto(webapp_url)
    page.set_input_files("#file", str(fake))
    page.click("#enhance")
    page.wait_for_selector("#error:not([hidden])", timeout=60_000)
    text = page.text_content("#error")
    assert "not an image" in text and "Traceback" not in text and "{" not in text
    assert page.is_enabled("#enhance")                          # ready for another try
    page.close()
