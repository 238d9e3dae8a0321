"""The Python SDK of context-manager: a WebSocket client and a REST client.

It depends on `websockets` and `httpx` only — never on the server's packages — so an agent can
use it without FastAPI, SQLAlchemy or pydantic installed.

    from app.client import RealtimeClient, RestClient
"""

from app.client.backoff import Backoff, event_matcher, should_reconnect
from app.client.realtime import (
    ConnectionState,
    Event,
    RealtimeClient,
    RealtimeError,
    Recovery,
    StateChange,
)
from app.client.rest import ApiError, Page, RestClient

__all__ = [
    "ApiError",
    "Backoff",
    "ConnectionState",
    "Event",
    "Page",
    "RealtimeClient",
    "RealtimeError",
    "Recovery",
    "RestClient",
    "StateChange",
    "event_matcher",
    "should_reconnect",
]
