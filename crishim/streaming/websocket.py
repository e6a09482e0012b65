"""RFC 6455 WebSocket: the opening-handshake answer and message framing, for both ends of a connection.

The server side is what crishim serves; the client side (masking, `client=True`) exists for the tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
from collections.abc import Callable

from crishim.streaming.idle import no_traffic_hook

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009

MAX_MESSAGE = 16 * 1024 * 1024


class WebSocketError(Exception):
    """The peer broke the framing rules."""


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def encode_frame(opcode: int, payload: bytes, *, mask: bool, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    mask_bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack(">H", size)
    else:
        head += bytes([mask_bit | 127]) + struct.pack(">Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


def apply_mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return payload
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


class WebSocket:
    """A message-oriented WebSocket over asyncio streams, after the HTTP handshake.

    `receive` answers pings and the close handshake itself and returns whole data messages.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 client: bool = False, on_traffic: Callable[[], None] = no_traffic_hook) -> None:
        self.reader = reader
        self.writer = writer
        self.client = client
        self.on_traffic = on_traffic
        self.close_sent = False
        self.close_code: int | None = None

    async def _read_frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = await self.reader.readexactly(2)
        if b0 & 0x70:
            raise WebSocketError("reserved bits set without a negotiated extension")
        fin, opcode, masked, size = bool(b0 & 0x80), b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F
        if masked == self.client:
            raise WebSocketError("client frames must be masked and server frames must not be")
        if size == 126:
            (size,) = struct.unpack(">H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack(">Q", await self.reader.readexactly(8))
        if opcode >= OP_CLOSE and (size > 125 or not fin):
            raise WebSocketError("control frames must be short and unfragmented")
        if size > MAX_MESSAGE:
            raise WebSocketError(f"frame of {size} bytes exceeds the {MAX_MESSAGE}-byte limit")
        key = await self.reader.readexactly(4) if masked else b""
        payload = await self.reader.readexactly(size) if size else b""
        self.on_traffic()
        return fin, opcode, apply_mask(payload, key) if masked else payload

    async def receive(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next text or binary message; None once the connection closed."""
        message: list[bytes] = []
        message_op = 0
        try:
            while True:
                fin, opcode, payload = await self._read_frame()
                if opcode == OP_PING:
                    self._send(OP_PONG, payload)
                    continue
                if opcode == OP_PONG:
                    continue
                if opcode == OP_CLOSE:
                    self.close_code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                    if not self.close_sent:
                        self._send(OP_CLOSE, payload[:2])
                        self.close_sent = True
                    return None
                if opcode == OP_CONTINUATION:
                    if not message_op:
                        raise WebSocketError("continuation frame without a message to continue")
                elif opcode in (OP_TEXT, OP_BINARY):
                    if message_op:
                        raise WebSocketError("new message before the previous one finished")
                    message_op = opcode
                else:
                    raise WebSocketError(f"unknown opcode {opcode}")
                message.append(payload)
                if sum(map(len, message)) > MAX_MESSAGE:
                    raise WebSocketError("message too large")
                if fin:
                    return message_op, b"".join(message)
        except WebSocketError:
            await self.close(CLOSE_PROTOCOL_ERROR)
            return None
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    def _send(self, opcode: int, payload: bytes) -> None:
        if not self.writer.is_closing():
            self.on_traffic()
            self.writer.write(encode_frame(opcode, payload, mask=self.client))

    async def send(self, payload: bytes, opcode: int = OP_BINARY) -> None:
        if self.close_sent:
            raise EOFError("websocket is closing")
        self._send(opcode, payload)
        try:
            await self.writer.drain()
        except ConnectionError as exc:
            raise EOFError from exc

    async def close(self, code: int = CLOSE_NORMAL) -> None:
        """Send our close frame (the peer's answer is read by whoever reads) and flush it."""
        if not self.close_sent:
            self.close_sent = True
            self._send(OP_CLOSE, struct.pack(">H", code))
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()

    def abort(self) -> None:
        self.writer.close()


class WebSocketTransport:
    """SPDY frames carried in binary messages (`SPDY/3.1+portforward.k8s.io`): a byte pipe."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._buffer = bytearray()

    async def read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            msg = await self.ws.receive()
            if msg is None:
                raise EOFError
            self._buffer += msg[1]
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    def write(self, data: bytes) -> None:
        if not self.ws.close_sent:
            self.ws._send(OP_BINARY, data)

    async def drain(self) -> None:
        try:
            await self.ws.writer.drain()
        except ConnectionError as exc:
            raise EOFError from exc

    def close(self) -> None:
        self.ws.writer.close()
