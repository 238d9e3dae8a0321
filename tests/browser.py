"""Debian's Chromium driven by Playwright, for every browser test (never a downloaded browser).

Without Chromium or Playwright a browser test is skipped locally with the reason, and fails
under CI=true (CI must never pass by skipping).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import IN_CI

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOOPBACK = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


def require_browser() -> None:
    """Skip (fail under CI=true) unless Playwright and Debian's Chromium are installed."""
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    if not missing:
        return
    reason = "browser tests need " + " and ".join(missing)
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium (Playwright's async API, in the test's event loop)."""
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def block_outside_network(context: Any) -> list[str]:
    """Abort every request of `context` not to this machine; the list of those aborted."""
    blocked: list[str] = []

    async def route(request_route: Any) -> None:
        url = request_route.request.url
        if urlsplit(url).scheme in {"data", "blob"} or urlsplit(url).hostname in LOOPBACK:
            await request_route.continue_()
        else:
            blocked.append(url)
            await request_route.abort("internetdisconnected")

    await context.route("**/*", route)
    return blocked
