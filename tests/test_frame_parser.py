"""The WebSocket port's own frame reading (frame_parser.py, in WebSocketProtocol) against
websockets' sans-I/O Protocol, which it replaced: on random streams of client frames — valid
and not, cut at random points — both deliver the same messages, answer the same pings and
fail with the same close code."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from typing import Any

import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uvicorn.server import ServerState
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side

from app.realtime.uvicorn_protocol import FrameLimits, WebSocketProtocol, WebSocketState

MAX_SIZE = 300


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True
) -> bytes:
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    size = len(payload)
    bit = 0x80 if masked else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


text = st.text(max_size=40).map(str.encode)
blob = st.binary(max_size=40)
valid_close = st.sampled_from([b"", struct.pack("!H", 1000), struct.pack("!H", 4001) + b"bye"])


def _is_text(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(
            ["text", "text", "binary", "fragments", "ping", "pong", "close", "bad", "big"]
        )
    )
    if kind == "text":
        return client_frame(0x1, draw(text))
    if kind == "binary":
        return client_frame(0x2, draw(blob))
    if kind == "fragments":
        # A message cut anywhere, even inside a character: it is checked once joined.
        whole = draw(text | blob)
        cuts = sorted(draw(st.lists(st.integers(0, len(whole)), min_size=1, max_size=3)))
        parts = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
        opcode = 0x1 if draw(st.booleans()) and _is_text(whole) else 0x2
        first = client_frame(opcode, parts[0], fin=False)
        parts = parts[1:]
        middle = [client_frame(0x0, p, fin=False) for p in parts[:-1]]
        ping = [client_frame(0x9, b"mid")] if draw(st.booleans()) else []
        return first + b"".join(middle) + b"".join(ping) + client_frame(0x0, parts[-1])
    if kind == "ping":
        return client_frame(0x9, draw(st.binary(max_size=125)))
    if kind == "pong":
        return client_frame(0xA, draw(st.binary(max_size=20)))
    if kind == "close":
        return client_frame(0x8, draw(valid_close | st.binary(max_size=6)))
    if kind == "big":
        return client_frame(0x2, draw(st.binary(min_size=MAX_SIZE - 2, max_size=MAX_SIZE + 2)))
    return draw(
        st.sampled_from(
            [
                client_frame(0x1, b"{}", masked=False),
                client_frame(0x1, b"{}", rsv=draw(st.integers(1, 7))),
                client_frame(draw(st.sampled_from([3, 4, 7, 11, 15])), b"x"),
                client_frame(0x9, b"p", fin=False),
                client_frame(0x9, b"p" * 126),
                client_frame(0x0, b"lone"),
                client_frame(0x1, b"a", fin=False) + client_frame(0x1, b"b"),
                client_frame(0x1, b"a", fin=False) + client_frame(0x8, b""),
            ]
        )
    )


def expected(data: bytes, cuts: list[int]) -> tuple[list[bytes], list[bytes], int | None]:
    """websockets' Protocol: messages (payloads joined), pong payloads, our close code."""
    protocol = Protocol(Side.SERVER, max_size=MAX_SIZE, logger=logging.getLogger("test"))
    messages: list[bytes] = []
    pongs: list[bytes] = []
    parts: list[bytes] | None = None
    for chunk in chunks(data, cuts):
        protocol.receive_data(chunk)
        for frame in protocol.events_received():
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                parts = (parts or []) + [bytes(frame.data)]
                if frame.fin:
                    messages.append(b"".join(parts))
                    parts = None
            elif frame.opcode is Opcode.PING:
                pongs.append(bytes(frame.data))
        if protocol.parser_exc is not None:
            break
    sent = protocol.close_sent
    return messages, pongs, sent.code if sent is not None else None


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def actual(
    data: bytes, cuts: list[int], loop: asyncio.AbstractEventLoop
) -> tuple[list[bytes], list[bytes], int | None]:
    """Our WebSocketProtocol, open, fed the same chunks over a transport that records."""
    config = uvicorn.Config(app=None, ws_max_size=MAX_SIZE, ws_ping_interval=None)
    config.loaded_app = None  # type: ignore[assignment]  # never called: no upgrade here
    protocol = WebSocketProtocol(
        config, ServerState(), loop, limits=FrameLimits(rate=1e9, burst=1e9, max_fragments=1000)
    )
    transport = FakeTransport()
    protocol.adopt(transport, None, ("127.0.0.1", 1), tls=False)
    protocol.state = WebSocketState.OPEN
    for chunk in chunks(data, cuts):
        protocol.data_received(chunk)
    messages, pongs, code = [], [], None
    for message in protocol._inbox or ():
        if message["type"] == "websocket.receive":
            payload = message.get("bytes")
            messages.append(payload if payload is not None else message["text"].encode())
    for opcode, payload in parse_written(b"".join(transport.written)):
        if opcode == 0xA:
            pongs.append(payload)
        elif opcode == 0x8 and code is None:
            code = struct.unpack("!H", payload[:2])[0] if payload else 1005
    return messages, pongs, code


def parse_written(written: bytes) -> list[tuple[int, bytes]]:
    """The server's frames (never masked)."""
    out, at = [], 0
    while at < len(written):
        opcode, size = written[at] & 0x0F, written[at + 1] & 0x7F
        at += 2
        if size == 126:
            (size,) = struct.unpack_from("!H", written, at)
            at += 2
        elif size == 127:
            (size,) = struct.unpack_from("!Q", written, at)
            at += 8
        out.append((opcode, written[at : at + size]))
        at += size
    return out


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.lists(frames(), min_size=1, max_size=8).map(b"".join),
    cuts=st.lists(st.integers(0, 2000), max_size=12),
)
def test_the_parser_agrees_with_websockets(stream: bytes, cuts: list[int]) -> None:
    loop = asyncio.new_event_loop()
    try:
        ours = actual(stream, cuts, loop)
    finally:
        loop.close()
    theirs = expected(stream, cuts)
    # Text is checked for UTF-8 by our protocol (1007) and not by websockets' sans-I/O layer;
    # the generator only sends valid UTF-8 in text frames, so the two agree everywhere.
    assert ours == theirs
