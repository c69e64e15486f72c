"""Browser tests' helpers: a Playwright page in Debian's chromium, and screenshots saved as test artifacts.

    from browser import browser_page, screenshot

    def test_something(...):
        with browser_page() as page:
            page.goto(url)
            ...
            screenshot(page, "after-upload")     # -> test-artifacts/after-upload.png

The browser is Debian's chromium (scripts/install_browser.sh), driven by the `playwright` package
(requirements-browser.txt) whose wheel carries the driver: `playwright install` is never run, nothing is downloaded.
Each page gets a fresh profile in a temporary folder, and chromium is told not to phone home, so a test sees the
page under test and nothing else. When the block raises, a screenshot and the page's console go into the artifacts
folder before the error propagates.

Without chromium or playwright the browser tests fail and say what to install: README's test command installs both.
"""
from __future__ import annotations

import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS_DIR = REPO / "test-artifacts"
CHROMIUM = os.environ.get("PHI3LORA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # containers (and root) have no user namespaces for chromium's sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # Docker's /dev/shm is 64 MB; Debian's launcher means to add this but its check can break
]
DEFAULT_TIMEOUT_MS = 20_000  # two slow cores: generous, but a hung page still fails in seconds, not minutes

_artifacts_of_page: dict[int, Path] = {}


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"no chromium at {CHROMIUM}: run scripts/install_browser.sh"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install -r requirements-browser.txt"
    return None


def require_browser() -> None:
    """Fail the calling test, saying what to install, when the browser is missing."""
    reason = missing_browser()
    if reason is not None:
        pytest.fail(f"the browser tests need a browser: {reason}", pytrace=False)


@contextmanager
def browser_page(artifacts_dir: str | Path | None = None, viewport: tuple[int, int] = (1280, 900),
                 timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Iterator:
    """A Playwright page in headless Debian chromium with a fresh profile; closed (and the browser stopped) on exit.
    Screenshots taken with `screenshot(page, name)` go to `artifacts_dir` (default: test-artifacts/ at the repo root)."""
    require_browser()
    from playwright.sync_api import sync_playwright

    artifacts = Path(artifacts_dir) if artifacts_dir is not None else ARTIFACTS_DIR
    console: list[str] = []
    with tempfile.TemporaryDirectory(prefix="phi3lora-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(timeout_ms)
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
            _artifacts_of_page[id(page)] = artifacts
            try:
                yield page
            except BaseException:
                _save_failure(page, artifacts, console)
                raise
            finally:
                _artifacts_of_page.pop(id(page), None)
        finally:
            context.close()


def screenshot(page, name: str, full_page: bool = True) -> Path:
    """Save a PNG of the page as <artifacts>/<name>.png (name made filesystem-safe); returns its path."""
    folder = _artifacts_of_page.get(id(page), ARTIFACTS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "screenshot"
    path = folder / (stem if stem.endswith(".png") else f"{stem}.png")
    page.screenshot(path=str(path), full_page=full_page)
    return path


def _save_failure(page, artifacts: Path, console: list[str]) -> None:
    """Best effort: a screenshot and the console of a page whose test failed; never hides the test's own error."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0].split("::")[-1]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", f"failure-{test or 'page'}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / f"{stem}-console.txt").write_text(f"url: {page.url}\n" + "\n".join(console) + "\n")
        page.screenshot(path=str(artifacts / f"{stem}.png"), full_page=True, timeout=5_000)
    except Exception:  # noqa: BLE001 - the page may be gone; the original error matters more
        pass
