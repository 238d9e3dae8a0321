"""Inbound WebSocket frames: a client's RFC 6455 frames read from the bytes the socket gave.

The WebSocket port's protocol (uvicorn_protocol.py) used websockets' sans-I/O `Protocol` for
this. It held ≈ 1.3 KB per connection for as long as the connection lived — a suspended
parser generator, its stream reader and buffers, event and write lists — even when the client
sent nothing for hours. `read_frame` keeps no state between calls: the protocol keeps the bytes
of an incomplete frame (none at all between frames, the usual case for an idle connection) and
what it needs of a fragmented message.

The checks are websockets', in the same order, so a client gets the close code it got before
(`tests/test_frame_parser.py` compares the two on random frame streams): an unknown opcode, an
unmasked frame, reserved bits (no extension is negotiated), a fragmented or over-long control
frame → 1002; a frame past the message's size bound → 1009. Header checks happen as soon as the
header is in, before its payload is read: a client cannot make us buffer a frame we refuse.
"""

from __future__ import annotations

import struct

try:  # websockets' C helper; the pure-Python one where it is not built
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the wheel ships it for this platform
    from websockets.utils import apply_mask

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))

PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009

# The close codes a peer may send (RFC 6455 §7.4: 1000–1003, 1007–1014 as registered; 3000–4999).
_PEER_CLOSE_CODES = frozenset(
    (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
)

_LENGTH16 = struct.Struct("!H")
_LENGTH64 = struct.Struct("!Q")


class FrameError(Exception):
    """The client broke the protocol: fail the connection with `code` (RFC 6455 §7.1.7)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def read_frame(
    data: bytes | bytearray, start: int, max_size: int
) -> tuple[int, bool, bytes, int] | None:
    """The frame at `data[start:]`: (opcode, fin, unmasked payload, offset past it), or None
    while it is incomplete. `max_size` bounds a data frame's payload (what is left of the
    message's bound); raises FrameError for a frame the protocol does not allow."""
    end = len(data)
    if end - start < 2:
        return None
    head1 = data[start]
    head2 = data[start + 1]
    opcode = head1 & 0x0F
    if opcode not in _OPCODES:
        raise FrameError(PROTOCOL_ERROR, "invalid opcode")
    if not head2 & 0x80:
        raise FrameError(PROTOCOL_ERROR, "incorrect masking")
    length = head2 & 0x7F
    position = start + 2
    if length == 126:
        if end - position < 2:
            return None
        (length,) = _LENGTH16.unpack_from(data, position)
        position += 2
    elif length == 127:
        if end - position < 8:
            return None
        (length,) = _LENGTH64.unpack_from(data, position)
        position += 8
    if length > max_size:
        raise FrameError(
            MESSAGE_TOO_BIG, f"frame with {length} bytes exceeds limit of {max_size} bytes"
        )
    if head1 & 0x70:
        raise FrameError(PROTOCOL_ERROR, "reserved bits must be 0")
    fin = bool(head1 & 0x80)
    if opcode >= OP_CLOSE:
        if length > 125:
            raise FrameError(PROTOCOL_ERROR, "control frame too long")
        if not fin:
            raise FrameError(PROTOCOL_ERROR, "fragmented control frame")
    payload_at = position + 4
    finish = payload_at + length
    if finish > end:
        return None
    view = memoryview(data)
    payload = apply_mask(view[payload_at:finish], bytes(view[position:payload_at]))
    return opcode, fin, payload, finish


def parse_close(payload: bytes) -> tuple[int, str]:
    """The code and reason of a peer's close frame (1005: it gave none)."""
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise FrameError(PROTOCOL_ERROR, "close frame too short")
    (code,) = _LENGTH16.unpack_from(payload)
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError as exc:
        raise FrameError(INVALID_DATA, f"{exc.reason} at position {exc.start}") from None
    if code not in _PEER_CLOSE_CODES and not 3000 <= code < 5000:
        raise FrameError(PROTOCOL_ERROR, "invalid status code")
    return code, reason
