"""Outbound frames, encoded once and shared.

A `Frame` carries the JSON payload (UTF-8 bytes, straight from orjson) of one server message
and, on first use, its WebSocket wire form (header + payload). Server-to-client frames are
never masked and we do not negotiate compression, so the wire bytes are the same for every
client: a publication to 1,000 subscribers is framed once, not 1,000 times.
"""

from __future__ import annotations

import struct


def encode_text_frame(payload: bytes) -> bytes:
    """RFC 6455 frame: FIN + text opcode, unmasked, with the shortest length encoding."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


class Frame:
    """One server message: its JSON payload bytes, and lazily its wire bytes and its text."""

    __slots__ = ("payload", "_wire", "kind")

    def __init__(self, payload: bytes, kind: str) -> None:
        self.payload = payload
        self.kind = kind  # "event", "ack", "error", "pong", "connected": counted in /stats
        self._wire: bytes | None = None

    @property
    def wire(self) -> bytes:
        wire = self._wire
        if wire is None:
            wire = self._wire = encode_text_frame(self.payload)
        return wire

    @property
    def text(self) -> str:
        """The payload as `str`, for ASGI text frames (the QueueSink path only)."""
        return self.payload.decode()

    def __len__(self) -> int:
        return len(self.payload)
