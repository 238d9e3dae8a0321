"""/docs and /redoc without internet: the API serves Swagger UI's and ReDoc's files itself.

The browser test blocks every request that is not to this machine (as on an air-gapped server)
and asserts that the pages render one operation per operation of /openapi.json.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.server import Service
from tests.browser import block_outside_network, chromium
from tests.conftest import ServiceFactory

METHODS = ("get", "post", "put", "patch", "delete")
# ReDoc's sidebar shows "API docs by Redocly" with a logo image from its CDN; offline the image
# hides itself (its onError) and nothing else is missing. It is the one request allowed out.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def api_url(service: Service, path: str) -> str:
    return f"http://127.0.0.1:{service.settings.api_port}{path}"


async def operations(service: Service) -> int:
    async with httpx.AsyncClient(timeout=10) as http:
        schema = (await http.get(api_url(service, "/openapi.json"))).json()
    return sum(1 for item in schema["paths"].values() for method in item if method in METHODS)


async def test_docs_pages_load_only_files_the_api_serves(service: Service) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for page in ("/docs", "/redoc"):
            html = (await http.get(api_url(service, page))).text
            assets = re.findall(r'(?:src|href)="([^"]+)"', html)
            assert assets, page
            for asset in assets:
                # Same origin only: no CDN, no Google Fonts.
                assert asset.startswith("/"), (page, asset)
                response = await http.get(api_url(service, asset))
                assert response.status_code == 200, (page, asset)
                assert len(response.content) > 1000, (page, asset)


def test_docs_assets_ship_with_the_installed_packages() -> None:
    """`pip install` brings them (fastapi-offline's wheel): no download at run time."""
    from importlib.metadata import files

    shipped = {path.name for path in files("fastapi-offline") or []}
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"} <= shipped


@pytest.fixture
async def offline_page() -> AsyncIterator[tuple[Any, list[str], list[str]]]:
    """A page whose every request off this machine is aborted: (page, blocked, JS errors)."""
    async with chromium() as browser:
        context = await browser.new_context()
        blocked = await block_outside_network(context)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page, blocked, errors
        await context.close()


@pytest.mark.browser
async def test_swagger_ui_renders_every_operation_offline(
    start_service: ServiceFactory, offline_page: tuple[Any, list[str], list[str]]
) -> None:
    service = await start_service(surfaces=("api",))
    page, blocked, errors = offline_page
    wanted = await operations(service)
    assert wanted >= 20
    await page.goto(api_url(service, "/docs"))
    await page.wait_for_function(
        "(n) => document.querySelectorAll('.opblock').length === n", arg=wanted, timeout=15_000
    )
    paths = await page.eval_on_selector_all(
        ".opblock .opblock-summary-path", "els => els.map(e => e.textContent)"
    )
    assert "/api/tasks" in [p.replace("\u200b", "") for p in paths]
    assert blocked == [] and errors == []


@pytest.mark.browser
async def test_redoc_renders_every_operation_offline(
    start_service: ServiceFactory, offline_page: tuple[Any, list[str], list[str]]
) -> None:
    service = await start_service(surfaces=("api",))
    page, blocked, errors = offline_page
    wanted = await operations(service)
    await page.goto(api_url(service, "/redoc"))
    await page.wait_for_function(
        "(n) => document.querySelectorAll('[data-section-id^=\"operation/\"]').length === n",
        arg=wanted,
        timeout=15_000,
    )
    assert set(blocked) <= {REDOC_LOGO} and errors == []
