"""Headless Chromium for tests: Debian's `chromium` package (/usr/bin/chromium, or RELAY_TEST_CHROMIUM) driven by
Playwright for Python. Playwright's own browser downloads are never used.

Without the browser or the package the tests that need them skip, saying why; with CI=true they fail instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

CHROMIUM = os.environ.get("RELAY_TEST_CHROMIUM", "/usr/bin/chromium")

__all__ = ["CHROMIUM", "chromium"]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A launched headless browser (playwright.async_api.Browser), closed on exit."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    async with async_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"], timeout=30_000)
        try:
            yield browser
        finally:
            await browser.close()
