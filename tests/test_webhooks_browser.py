"""The dashboard's Webhooks page in headless Chromium: register, see deliveries, retry one."""

from __future__ import annotations

from typing import Any

import pytest

from tests import test_dashboard_browser as shared
from tests.conftest import ServiceFactory
from tests.test_dashboard_browser import SCREENSHOTS, SURFACES, api, dashboard_url
from tests.webhook_receiver import Answer, Received, Receiver

pytestmark = pytest.mark.browser

# The browser fixtures of the dashboard's tests (Debian's Chromium, JavaScript errors fail).
browser = shared.browser
open_page = shared.open_page


async def test_webhooks_page_lists_deliveries_and_retries_one(
    start_service: ServiceFactory, open_page: Any
) -> None:
    service = await start_service(
        surfaces=SURFACES,
        webhook_allow_private=True,
        webhook_retry_schedule="",  # a failure is final at once: the page shows it failed
        webhook_poll_interval=0.2,
    )
    status = 500

    def plan(_request: Received) -> Answer:
        return Answer(status, body=b"receiver says hello")

    async with Receiver(plan) as receiver:
        page = await open_page(dashboard_url(service, "/webhooks"))
        await page.fill("#url", receiver.url)
        await page.fill("#events", "task.created")
        await page.click("#register button[type=submit]")
        await page.wait_for_selector("#secret.show")
        assert "whsec_" in await page.inner_text("#secret")
        await page.wait_for_selector("#endpoints tbody tr[data-id]")
        assert receiver.url in await page.inner_text("#endpoints")

        async with api(service) as http:
            await http.post("/api/tasks", json={"title": "from the browser test"})
        await receiver.wait_for(lambda rs: len(rs) == 1)
        failed = page.locator('#deliveries tbody tr[data-state="failed"]')
        await failed.first.wait_for(timeout=10_000)
        text = await failed.first.inner_text()
        assert "task.created" in text and "500" in text and "ms" in text

        status = 200
        await failed.first.locator('button[data-action="retry"]').click()
        await receiver.wait_for(lambda rs: len(rs) == 2)
        await page.wait_for_selector('#deliveries tbody tr[data-state="succeeded"]', timeout=10_000)
        rows = await page.locator("#deliveries tbody tr").all_inner_texts()
        assert "200" in rows[0] and "receiver says hello" in rows[0]
        assert receiver.requests[0].webhook_id == receiver.requests[1].webhook_id

        await page.click('#endpoints button[data-action="test"]')
        await receiver.wait_for(lambda rs: any(r.json["type"] == "webhook.test" for r in rs))
        await page.wait_for_function(
            "() => document.querySelector('#deliveries').innerText.includes('webhook.test')",
            timeout=10_000,
        )
        await page.screenshot(path=str(SCREENSHOTS / "webhooks.png"), full_page=True)


async def test_webhooks_page_with_a_dashboard_token_says_an_admin_is_needed(
    start_service: ServiceFactory, open_page: Any
) -> None:
    from app.core.security import Role, TokenCodec

    service = await start_service(surfaces=SURFACES, auth_mode="token", secret_key="k" * 40)
    token = TokenCodec(service.settings).create("wall", role=Role.DASHBOARD)
    page = await open_page(dashboard_url(service, f"/webhooks?token={token}"))
    await page.wait_for_selector("#banner.show")
    assert "admin token" in await page.inner_text("#banner")
