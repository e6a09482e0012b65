"""The remotecommand channels (stdin, stdout, stderr, error, resize) over either transport.

Exec and attach see one interface, `Channels`, whatever the client speaks: SPDY streams chosen by their
`streamType` header, or WebSocket messages tagged with a channel byte.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from crishim.streaming import protocol
from crishim.streaming.spdy import Session, Stream
from crishim.streaming.websocket import OP_BINARY, OP_TEXT, WebSocket

STREAM_WAIT = 30.0  # seconds a client gets to open its streams, as kubelet's default
CLOSE_WAIT = 5.0

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
STREAM_CLOSE = 255  # v5 WebSocket: [255, channel] closes that channel


@dataclass(frozen=True)
class Options:
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


@dataclass(frozen=True)
class Size:
    width: int
    height: int


class Channels(Protocol):
    gone: asyncio.Event
    """Set once the client went away (or the connection ended)."""

    async def read_stdin(self) -> bytes:
        """Next stdin chunk; b"" at its end."""
        ...

    def resizes(self) -> AsyncIterator[Size]: ...

    async def initial_size(self, within: float) -> Size | None:
        """The first terminal size the client sends, if it sends one within `within` seconds."""
        ...

    async def write(self, channel: int, data: bytes) -> None: ...

    async def finish(self, status: dict[str, Any] | None) -> None:
        """Close the output channels, report `status` (None: success) and close the connection."""
        ...


def _error_payload(version: str, status: dict[str, Any] | None) -> bytes:
    """v4 and later send the Status document; older protocols a bare message, nothing on success."""
    if version in (protocol.V5, protocol.V4, protocol.V5_B64, protocol.V4_B64):
        return protocol.encode_status(status or protocol.success_status())
    return str(status.get("message", "")).encode() if status else b""


class _JSONStream:
    """Concatenated JSON objects arriving in arbitrary chunks (the resize stream)."""

    def __init__(self) -> None:
        self.buffer = ""
        self.decoder = json.JSONDecoder()

    def feed(self, chunk: bytes) -> list[Size]:
        self.buffer += chunk.decode(errors="replace")
        sizes: list[Size] = []
        while True:
            text = self.buffer.lstrip()
            if not text:
                self.buffer = ""
                return sizes
            try:
                obj, end = self.decoder.raw_decode(text)
            except json.JSONDecodeError:
                self.buffer = text
                return sizes
            self.buffer = text[end:]
            if isinstance(obj, dict):
                sizes.append(Size(int(obj.get("Width", 0)), int(obj.get("Height", 0))))


class _Resizes:
    """Terminal sizes queued as they arrive, so the first can be awaited before the process starts."""

    def __init__(self) -> None:
        self._resize: asyncio.Queue[Size | None] = asyncio.Queue()
        self._first: Size | None = None

    async def initial_size(self, within: float) -> Size | None:
        try:
            self._first = await asyncio.wait_for(self._resize.get(), within)
        except TimeoutError:
            return None
        if self._first is None:
            self._resize.put_nowait(None)
        return self._first

    async def resizes(self) -> AsyncIterator[Size]:
        if self._first is not None:
            yield self._first
        while (size := await self._resize.get()) is not None:
            yield size


class SpdyChannels(_Resizes):
    """Server side of remotecommand over SPDY: wait for the client's streams, then serve them."""

    def __init__(self, session: Session, version: str, options: Options) -> None:
        super().__init__()
        self.session = session
        self.version = version
        self.options = options
        self.gone = session.closed
        self.streams: dict[str, Stream] = {}
        self._all = asyncio.Event()
        self._resize_task: asyncio.Task[None] | None = None
        self.expected = {"error"}
        if options.stdin:
            self.expected.add("stdin")
        if options.stdout:
            self.expected.add("stdout")
        if options.stderr and not options.tty:
            self.expected.add("stderr")
        if options.tty and version not in (protocol.V1, protocol.V2):
            self.expected.add("resize")

    def on_stream(self, stream: Stream) -> None:
        kind = stream.header("streamType")
        if kind in self.expected and kind not in self.streams:
            self.streams[kind] = stream
            if self.expected <= self.streams.keys():
                self._all.set()
        else:
            stream.send_reset()

    async def wait_streams(self) -> bool:
        """True once every expected stream is open; False if the client left or took too long."""
        waiter = asyncio.ensure_future(self._all.wait())
        gone = asyncio.ensure_future(self.gone.wait())
        try:
            await asyncio.wait({waiter, gone}, timeout=STREAM_WAIT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            gone.cancel()
        if not self._all.is_set() or self.gone.is_set():
            return False
        self._resize_task = asyncio.ensure_future(self._read_resizes())
        return True

    async def _read_resizes(self) -> None:
        stream = self.streams.get("resize")
        parser = _JSONStream()
        try:
            while stream is not None and (chunk := await stream.read()):
                for size in parser.feed(chunk):
                    self._resize.put_nowait(size)
        finally:
            self._resize.put_nowait(None)

    async def read_stdin(self) -> bytes:
        stream = self.streams.get("stdin")
        return await stream.read() if stream is not None else b""

    async def write(self, channel: int, data: bytes) -> None:
        stream = self.streams.get("stdout" if channel == STDOUT else "stderr")
        if stream is not None:
            await stream.write(data)

    async def finish(self, status: dict[str, Any] | None) -> None:
        with contextlib.suppress(EOFError):
            for name in ("stdout", "stderr"):
                if name in self.streams:
                    await self.streams[name].close()
            error = self.streams.get("error")
            if error is not None:
                payload = _error_payload(self.version, status)
                if payload:
                    await error.write(payload)
                await error.close()
        await self.session.close()
        if self._resize_task is not None:
            self._resize_task.cancel()


class WebSocketChannels(_Resizes):
    """Server side of remotecommand over WebSocket (channel byte per message)."""

    def __init__(self, ws: WebSocket, version: str, options: Options) -> None:
        super().__init__()
        self.ws = ws
        self.version = version
        self.options = options
        self.base64 = ".base64." in f".{version}"
        self.gone = asyncio.Event()
        self._stdin: asyncio.Queue[bytes] = asyncio.Queue(64)
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        first = STDOUT if self.options.stdout else STDERR if self.options.stderr else ERROR
        await self._send(first, b"")

    async def _read_loop(self) -> None:
        parser = _JSONStream()
        stdin_open = True
        try:
            while (msg := await self.ws.receive()) is not None:
                opcode, data = msg
                if not data:
                    continue
                channel = data[0] - ord("0") if self.base64 and opcode == OP_TEXT else data[0]
                payload = base64.b64decode(data[1:]) if self.base64 else data[1:]
                if channel == STREAM_CLOSE and self.version in (protocol.V5, protocol.V5_B64):
                    if payload[:1] == bytes([STDIN]) and stdin_open:
                        stdin_open = False
                        await self._stdin.put(b"")
                elif channel == STDIN and stdin_open and payload and self.options.stdin:
                    await self._stdin.put(payload)
                elif channel == RESIZE:
                    for size in parser.feed(payload):
                        await self._resize.put(size)
        finally:
            self.gone.set()
            if stdin_open:
                with contextlib.suppress(asyncio.QueueFull):
                    self._stdin.put_nowait(b"")
            self._resize.put_nowait(None)

    async def read_stdin(self) -> bytes:
        if not self.options.stdin:
            return b""
        if self._stdin.empty() and self.gone.is_set():
            return b""
        return await self._stdin.get()

    async def _send(self, channel: int, data: bytes) -> None:
        if self.base64:
            await self.ws.send(str(channel).encode() + base64.b64encode(data), OP_TEXT)
        else:
            await self.ws.send(bytes([channel]) + data, OP_BINARY)

    async def write(self, channel: int, data: bytes) -> None:
        await self._send(channel, data)

    async def finish(self, status: dict[str, Any] | None) -> None:
        with contextlib.suppress(EOFError):
            payload = _error_payload(self.version, status)
            if payload:
                await self._send(ERROR, payload)
        await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), CLOSE_WAIT)
            self._reader.cancel()
        self.ws.abort()
