"""The browser test setup works here: Debian chromium driven by Playwright opens a page served on loopback, clicks,
reads the result, and leaves a screenshot in test-artifacts/ (and a screenshot plus console log when a test fails)."""
import functools
import http.server
import threading
from contextlib import contextmanager

import pytest

from browser import ARTIFACTS_DIR, browser_page, screenshot

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>phi3lora browser smoke test</title></head>
<body>
  <h1>Browser smoke test</h1>
  <button id="go" onclick="count += 1; document.getElementById('out').textContent = 'clicked ' + count + ' time(s)'">Click me</button>
  <p id="out">not clicked</p>
  <script>let count = 0; console.log("page ready");</script>
</body></html>
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextmanager
def serve(directory):
    """Serve `directory` over HTTP on a free port of 127.0.0.1; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def site(tmp_path):
    (tmp_path / "index.html").write_text(PAGE, encoding="utf-8")
    with serve(tmp_path) as url:
        yield url


def test_chromium_opens_a_page_clicks_and_saves_a_screenshot(site):
    with browser_page() as page:
        page.goto(f"{site}/index.html")
        assert page.title() == "phi3lora browser smoke test"
        assert page.locator("#out").text_content() == "not clicked"
        page.get_by_role("button", name="Click me").click()
        page.get_by_role("button", name="Click me").click()
        assert page.locator("#out").text_content() == "clicked 2 time(s)"
        shot = screenshot(page, "browser smoke: after two clicks")
    assert shot == ARTIFACTS_DIR / "browser-smoke-after-two-clicks.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 1000


def test_a_failing_browser_test_leaves_a_screenshot_and_the_console(site, tmp_path):
    artifacts = tmp_path / "artifacts"
    with pytest.raises(AssertionError, match="on purpose"):
        with browser_page(artifacts) as page:
            page.goto(f"{site}/index.html")
            page.evaluate("console.error('something broke')")
            raise AssertionError("on purpose")
    (png,) = artifacts.glob("failure-test_a_failing_browser_test*.png")
    (console,) = artifacts.glob("failure-*-console.txt")
    assert png.read_bytes()[:4] == b"\x89PNG"
    text = console.read_text()
    assert f"url: {site}/index.html" in text and "log: page ready" in text and "error: something broke" in text
