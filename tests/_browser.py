"""Real Chromium for the web app's tests: Debian's `chromium` driven by Playwright for Python.

Never `playwright install` (it downloads browsers): the Makefile's `browser` target installs
the distribution package. Launched with Playwright's defaults plus the flags that keep it
off the network. Pages are watched for console errors, uncaught exceptions and dialogs (an
`alert` from injected markup), which tests assert away.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/lib/chromium/chromium")
LAUNCH_ARGS = ["--disable-background-networking", "--disable-component-update", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("VPLAB_TEST_ARTIFACTS", Path(__file__).parents[1] / "build"))
SCREENSHOTS = ARTIFACTS / "screenshots"


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"the web app tests need Debian's chromium at {CHROMIUM}: `make browser` installs "
            "it as root, or `sudo apt-get install --no-install-recommends chromium` "
            "(or set CHROMIUM=/path/to/chromium)"
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Problems:
    """What went wrong in a page: console errors, uncaught exceptions, dialogs."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def clean(self, allow: tuple[str, ...] = ()) -> list[str]:
        """Problems not matching any of the ``allow`` regexes."""
        return [p for p in self.problems if not any(re.search(a, p) for a in allow)]


class Watch(Problems):
    """Problems collected from a Playwright page's events."""

    def __init__(self, page: Page):
        super().__init__()
        page.on(
            "console",
            lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"),
        )
        page.on("pageerror", lambda e: self.problems.append(f"exception: {e}"))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog) -> None:
        if dialog.type == "confirm":  # our own "delete ...?" questions
            dialog.accept()
            return
        self.problems.append(f"dialog {dialog.type}: {dialog.message}")
        dialog.dismiss()


def open_page(browser: Browser, url: str) -> tuple[Page, Watch]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    watch = Watch(page)
    page.goto(url)
    return page, watch


def sign_in(page: Page, key: str) -> None:
    page.get_by_test_id("api-key-input").fill(key)
    page.get_by_test_id("api-key-submit").click()
    page.get_by_test_id("dataset-list").wait_for()


OVERLAY_PIXELS = """() => {
  const c = document.querySelector('[data-testid=mask-overlay]');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
  return n;
}"""


def overlay_pixels(page: Page) -> int:
    """Non-transparent pixels of the mask overlay: the current mask's area."""
    return int(page.evaluate(OVERLAY_PIXELS))


def download(page: Page, test_id: str, to: Path) -> Path:
    """Click the control ``test_id`` and save the download it starts to ``to``."""
    with page.expect_download() as info:
        page.get_by_test_id(test_id).click()
    info.value.save_as(to)
    return to


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
