"""Outbound frames, encoded once and shared.

A `Frame` is one server message in its WebSocket wire form: header + JSON payload (the UTF-8
bytes straight from orjson). Server-to-client frames are never masked and we do not negotiate
compression, so the wire bytes are the same for every client: a publication to 1,000
subscribers is framed once, not 1,000 times.
"""

from __future__ import annotations

import struct


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """RFC 6455 frame: FIN + `opcode`, unmasked, with the shortest length encoding."""
    size = len(payload)
    first = 0x80 | opcode
    if size < 126:
        header = bytes((first, size))
    elif size < 65536:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload


def encode_text_frame(payload: bytes) -> bytes:
    """A text frame (opcode 1): every server message."""
    return encode_frame(0x1, payload)


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: the code, then the reason cut to fit a control frame (125
    bytes in all) at a character boundary."""
    encoded = reason.encode()
    if len(encoded) > 123:
        encoded = encoded[:123].decode(errors="ignore").encode()
    return struct.pack("!H", code) + encoded


def _header_size(wire: bytes) -> int:
    """The header's length, from its 7-bit length field (126: 16-bit, 127: 64-bit length)."""
    marker = wire[1] & 0x7F
    return 2 if marker < 126 else 4 if marker == 126 else 10


class Frame:
    """One server message, held as its wire bytes (header + JSON payload)."""

    __slots__ = ("wire", "kind")

    def __init__(self, payload: bytes, kind: str) -> None:
        # Framed at once and the payload let go: orjson's output buffers are over-allocated
        # (about 4 KiB for a small event), and a publication kept in history would pin one.
        self.wire = encode_text_frame(payload)
        self.kind = kind  # "event", "ack", "error", "pong", "connected": counted in /stats

    @property
    def payload(self) -> bytes:
        """The JSON payload (a copy: for history replies and the QueueSink path only)."""
        return self.wire[_header_size(self.wire) :]

    @property
    def text(self) -> str:
        """The payload as `str`, for ASGI text frames (the QueueSink path only)."""
        return self.payload.decode()

    def __len__(self) -> int:
        return len(self.wire)
