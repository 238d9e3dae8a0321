"""BASELINE ONLY — not the service. The bar the benchmark suite measures context-manager against.

A pub/sub server in a few dozen lines on the bare `websockets` library, speaking the seed's JSON
protocol (connected / subscribe / unsubscribe / publish / ping → ack / pong / event frames) with
websockets' own `broadcast()` for fan-out. It has none of the service's protocol checks, limits,
presence, slow-consumer handling or stats; it exists so that every benchmark figure can be read
as a ratio to "what the bare library does on this machine, in this run".

Fair to both sides: orjson for JSON and uvloop for the loop (as the service), no compression
(the service negotiates none), the same listen backlog as uvicorn (2048), ping every 20 s.

    python bench/reference_server.py --port 3849
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, broadcast, serve

channels: dict[str, set[ServerConnection]] = {}


def frame(**fields: Any) -> str:
    return orjson.dumps({**fields, "timestamp": time.time_ns() // 1_000_000}).decode()


async def handler(ws: ServerConnection) -> None:
    """One client: answer its messages in order until it leaves."""
    mine: set[str] = set()
    await ws.send(frame(type="connected", client_id=f"ws_{secrets.token_hex(6)}"))
    try:
        async for raw in ws:
            try:
                msg = orjson.loads(raw)
                kind, rid, channel = msg.get("type"), msg.get("id"), msg.get("channel")
            except (orjson.JSONDecodeError, AttributeError):
                kind = rid = channel = None
            if kind == "ping":
                await ws.send(frame(type="pong"))
                continue
            if kind == "subscribe" and isinstance(channel, str):
                channels.setdefault(channel, set()).add(ws)
                mine.add(channel)
            elif kind == "unsubscribe" and isinstance(channel, str):
                channels.get(channel, set()).discard(ws)
                mine.discard(channel)
            elif (
                kind == "publish" and isinstance(channel, str) and isinstance(msg.get("event"), str)
            ):
                event = frame(channel=channel, event=msg["event"], data=msg.get("data"))
                broadcast(channels.get(channel, ()), event)  # encoded once, framed per client
            else:
                await ws.send(frame(error="Invalid message", code="INVALID_MESSAGE", id=rid))
                continue
            if rid is not None:  # the ack follows the fan-out, as in the service
                await ws.send(frame(type="ack", id=rid, success=True, channel=channel))
    finally:
        for channel in mine:
            subscribers = channels.get(channel, set())
            subscribers.discard(ws)
            if not subscribers:
                channels.pop(channel, None)


async def main(host: str, port: int) -> None:
    options: dict[str, Any] = {"compression": None, "backlog": 2048, "max_size": 1 << 20}
    async with serve(handler, host, port, **options) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3849)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    loop_factory = None
    if args.loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            runner.run(main(args.host, args.port))
        except KeyboardInterrupt:
            pass
