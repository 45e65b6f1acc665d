import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property tests run on shared 2-core CI machines: no per-example deadline.
settings.register_profile(
    "ci", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium, through Playwright (browser tests only)."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "Debian's chromium is needed (make browser-deps installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


# Known messages of the theme itself, not of this book: sphinx-book-theme's colour-mode reset,
# and sphinx-thebe's config script that Jupyter Book 1 includes twice on every page.
THEME_MESSAGES = ("Got invalid theme mode", "Identifier 'THEBE_JS_URL' has already been declared")


class Page:
    """A page opened offline, with the JS errors and blocked requests it produced."""

    def __init__(self, browser, path: Path):
        self.errors: list[str] = []
        self.blocked: list[str] = []
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.route("**/*", self._offline)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.goto(path.as_uri())
        self.page.wait_for_load_state("load")

    def _offline(self, route) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def our_errors(self) -> list[str]:
        return [e for e in self.errors if not any(m in e for m in THEME_MESSAGES)]


@pytest.fixture
def open_page(browser):
    """``open_page(path)``: a :class:`Page` of a file, closed after the test."""
    pages = []

    def open_(path: Path) -> Page:
        pages.append(Page(browser, path))
        return pages[-1]

    yield open_
    for page in pages:
        page.page.close()
