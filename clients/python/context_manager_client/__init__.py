"""The Python client of context-manager: a WebSocket client and a REST client.

It depends on `websockets` and `httpx` only — never on the server's packages — so an agent can
use it without FastAPI, SQLAlchemy or pydantic installed.

    from context_manager_client import RealtimeClient, RestClient
"""

from context_manager_client.backoff import Backoff, event_matcher, should_reconnect
from context_manager_client.realtime import (
    ConnectionState,
    Event,
    RealtimeClient,
    RealtimeError,
    Recovery,
    StateChange,
)
from context_manager_client.rest import ApiError, Page, RestClient

__version__ = "0.1.0"

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
    "__version__",
    "event_matcher",
    "should_reconnect",
]
