"""Browser fixtures: Debian's Chromium driven by Playwright (sync API), headless.

Playwright's own browser download is not used: the tests drive the system Chromium
(`/usr/bin/chromium`, or `CHROMIUM_PATH`). Without it, or without the `playwright` package,
the browser tests are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
LAPTOP = {"width": 1280, "height": 800}
TABLET = {"width": 820, "height": 1180}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM} (set CHROMIUM_PATH); browser tests skipped")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed; browser tests skipped")
    # Playwright's sync API keeps an asyncio loop in this thread; Django would then refuse the
    # ORM calls of the test and its fixtures (they are plain synchronous code, so this is safe).
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


class BrowserErrors(list):
    """JavaScript errors seen by a page; a test fails if any is left at its end."""


@pytest.fixture
def page(browser: Any, live_server: Any) -> Iterator[Any]:
    context = browser.new_context(
        viewport=LAPTOP, accept_downloads=True, locale="en-GB", timezone_id="UTC",
        base_url=live_server.url,
    )
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors = BrowserErrors()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    yield page
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def screenshot(page: Any, name: str, **kwargs: Any) -> Path:
    """Save a screenshot for the documentation (docs/screenshots/<name>.png)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), animations="disabled", caret="hide", **kwargs)
    return path
