"""The webhooks part of a node: dispatcher, deliverer and sender, started and stopped together.

    start: sender → deliverer → dispatcher (+ hub tap on `global` for wake-ups)
    stop:  untap → dispatcher (writes the presence events still queued, e.g. the drain's
           disconnects) → deliverer (attempts under way get STOP_GRACE, leases handed back)
           → sender (its connections)

It is also the domain layer's `WebhookPort` (app/domain/webhooks.py): the URL check and the
"deliver now" nudge after a test or a manual retry.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.realtime.manager import ConnectionManager
from app.webhooks.addresses import AddressGuard
from app.webhooks.delivery import Deliverer
from app.webhooks.fanout import Dispatcher
from app.webhooks.sender import Sender

logger = logging.getLogger("context_manager.webhooks")


class Webhooks:
    """One node's webhook delivery (see the module docstring)."""

    def __init__(self, settings: Settings, engine: AsyncEngine, manager: ConnectionManager) -> None:
        self.settings = settings
        self.manager = manager
        self.guard = AddressGuard(settings.webhook_allow_private)
        self.sender = Sender(self.guard, settings.webhook_timeout)
        self.deliverer = Deliverer(settings, engine, self.sender, manager.node_id, manager.publish)
        self.dispatcher = Dispatcher(engine, settings.webhook_poll_interval, self.deliverer.wake)
        self._tapped = False

    async def start(self) -> None:
        await self.deliverer.start()
        await self.dispatcher.start()
        try:
            await self.manager.hub.tap("global", self.dispatcher.on_global)
            self._tapped = True
        except Exception:  # noqa: BLE001 - polling still finds other writers' events
            logger.warning("webhooks could not watch `global`; polling only", exc_info=True)

    async def stop(self) -> None:
        if self._tapped:
            self._tapped = False
            try:
                await self.manager.hub.untap("global", self.dispatcher.on_global)
            except Exception:  # noqa: BLE001 - stopping anyway
                logger.warning("webhooks could not stop watching `global`", exc_info=True)
        await self.dispatcher.stop()
        await self.deliverer.stop()
        await self.sender.close()

    # --- inputs ---------------------------------------------------------------------------

    def wake(self) -> None:
        """A commit in this process: the outbox may have grown."""
        self.dispatcher.wake()

    async def on_presence(self, event: str, agent_id: str, data: dict[str, Any]) -> None:
        """The presence hook (no I/O): agent.connected / agent.disconnected become rows."""
        self.dispatcher.record_presence(event, agent_id, data)

    # --- the domain layer's port ----------------------------------------------------------

    async def check_url(self, url: str) -> None:
        """Raise UrlRefused if `url` is no place for a webhook (resolving its host)."""
        await self.guard.target(url)

    def deliver_now(self) -> None:
        """A delivery was queued by hand (test, retry) or an endpoint enabled: look now."""
        self.deliverer.wake()

    def endpoints_changed(self) -> None:
        """An endpoint was registered or enabled (committed): fan out to it from now on."""
        self.dispatcher.endpoints_changed()
