"""docs/asyncapi.yaml is the document app/realtime/asyncapi.py builds from the protocol's code.

The JS package's tests (clients/js/test/asyncapi.test.mjs) validate it against the official
AsyncAPI 3.1 JSON schema and real frames against its message schemas.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml

from app.events import DECLARED
from app.realtime import asyncapi
from app.realtime.channels import ChannelKind
from app.realtime.protocol import CloseCode, ErrorCode, MessageType, ResetReason
from tests.conftest import ServiceFactory

DOC = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"


def test_the_document_in_docs_is_the_generated_one() -> None:
    assert DOC.read_text() == asyncapi.render(), (
        "docs/asyncapi.yaml is stale: python -m app.realtime.asyncapi > docs/asyncapi.yaml"
    )


def test_it_names_every_code_message_channel_and_event_of_the_code() -> None:
    doc = yaml.safe_load(DOC.read_text())
    assert doc["asyncapi"] == "3.1.0"
    messages = doc["components"]["messages"]
    types = {
        m["payload"].get("properties", {}).get("type", {}).get("const") for m in messages.values()
    }
    assert {t.value for t in MessageType} <= types
    assert {"connected", "ack", "pong", "unrecovered"} <= types and "error" in messages
    assert doc["components"]["schemas"]["ErrorCode"]["enum"] == [c.value for c in ErrorCode]
    closes = {row["code"]: row for row in doc["x-close-codes"]}
    assert {int(c) for c in CloseCode} <= closes.keys()
    for code in CloseCode:
        assert closes[int(code)]["reconnect"] == code.reconnect, code
    reasons = messages["unrecovered"]["payload"]["properties"]["reason"]["enum"]
    assert reasons == [r.value for r in ResetReason]
    assert set(doc["channels"]) == {"connection"} | {k.value for k in ChannelKind}
    for kind in ChannelKind:
        channel = doc["channels"][kind.value]
        assert channel["address"] == kind.pattern
        assert ("parameters" in channel) is (not kind.singleton)
    events = {
        name
        for m in messages.values()
        for name in m["payload"]
        .get("allOf", [{}, {}])[1]
        .get("properties", {})
        .get("event", {})
        .get("enum", [])
    }
    assert events == {name for d in DECLARED for name in d.names}


async def test_served_on_the_websocket_port(start_service: ServiceFactory) -> None:
    service = await start_service(surfaces=("ws",))
    url = f"http://127.0.0.1:{service.settings.ws_port}/asyncapi.yaml"
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/yaml")
    assert response.text == DOC.read_text()
