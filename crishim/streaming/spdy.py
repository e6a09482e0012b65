"""SPDY/3.1 as Kubernetes clients speak it (moby/spdystream): framing, header compression, a session.

Only what remotecommand and port-forward use: SYN_STREAM / SYN_REPLY / RST_STREAM / SETTINGS / PING /
GOAWAY / HEADERS / WINDOW_UPDATE control frames and DATA frames. spdystream does no flow control, so
WINDOW_UPDATE is read and ignored and never sent; a slow consumer instead stalls the frame reader, which
pushes back on the peer through TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from crishim.streaming.idle import no_traffic_hook

VERSION = 3

SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# RST_STREAM status codes.
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
CANCEL = 5
STREAM_IN_USE = 8

MAX_FRAME = 0xFFFFFF
STREAM_BUFFER = 64  # DATA frames queued per stream before the reader waits

# The SPDY/3 header-compression dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1): length-prefixed
# header names and values, then a run of status lines, dates and content types.
_DICTIONARY_WORDS = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset", "accept-encoding",
    "accept-language", "accept-ranges", "age", "allow", "authorization", "cache-control", "connection",
    "content-base", "content-encoding", "content-language", "content-length", "content-location",
    "content-md5", "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host",
    "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "last-modified",
    "location", "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
    "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via",
    "warning", "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url",
    "public", "set-cookie", "keep-alive", "origin",
)
_DICTIONARY_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _DICTIONARY_WORDS) \
    + _DICTIONARY_TAIL.encode()


class ProtocolError(Exception):
    """The peer sent bytes that are not SPDY/3 as we understand it."""


Headers = dict[str, str]
"""Lower-case names; several values of one name are kept joined by NUL, as on the wire."""


class HeaderCompressor:
    """One per direction of a session: the zlib stream spans every header block of the connection."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8,
                                   zlib.Z_DEFAULT_STRATEGY, DICTIONARY)

    def compress(self, headers: Headers) -> bytes:
        return self._z.compress(encode_headers(headers)) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    def __init__(self) -> None:
        self._z = zlib.decompressobj(zdict=DICTIONARY)

    def decompress(self, block: bytes) -> Headers:
        try:
            raw = self._z.decompress(block)
        except zlib.error as exc:
            raise ProtocolError(f"bad header block: {exc}") from exc
        return decode_headers(raw)


def encode_headers(headers: Headers) -> bytes:
    out = [struct.pack(">I", len(headers))]
    for name, value in headers.items():
        n, v = name.lower().encode(), value.encode()
        out += [struct.pack(">I", len(n)), n, struct.pack(">I", len(v)), v]
    return b"".join(out)


def decode_headers(raw: bytes) -> Headers:
    def take(pos: int) -> tuple[bytes, int]:
        if pos + 4 > len(raw):
            raise ProtocolError("truncated header block")
        (size,) = struct.unpack_from(">I", raw, pos)
        end = pos + 4 + size
        if end > len(raw):
            raise ProtocolError("truncated header block")
        return raw[pos + 4:end], end

    if len(raw) < 4:
        raise ProtocolError("truncated header block")
    (count,) = struct.unpack_from(">I", raw, 0)
    headers: Headers = {}
    pos = 4
    for _ in range(count):
        name, pos = take(pos)
        value, pos = take(pos)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}\0{text}" if key in headers else text
    return headers


@dataclass
class Frame:
    """A decoded frame: `kind` is the control type, or 0 for DATA."""

    kind: int
    flags: int = 0
    stream_id: int = 0
    data: bytes = b""
    headers: Headers = field(default_factory=dict)
    status: int = 0  # RST_STREAM and GOAWAY status, PING id, WINDOW_UPDATE delta
    associated_id: int = 0
    priority: int = 0
    settings: list[tuple[int, int, int]] = field(default_factory=list)  # (flags, id, value)


def _control(kind: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise ValueError("frame too large")
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, data: bytes, fin: bool = False) -> bytes:
    if len(data) > MAX_FRAME:
        raise ValueError("frame too large")
    return struct.pack(">II", stream_id & 0x7FFFFFFF,
                       ((FLAG_FIN if fin else 0) << 24) | len(data)) + data


def syn_stream_frame(comp: HeaderCompressor, stream_id: int, headers: Headers, *, fin: bool = False,
                     associated_id: int = 0, priority: int = 0) -> bytes:
    payload = struct.pack(">IIBB", stream_id, associated_id, (priority & 7) << 5, 0) \
        + comp.compress(headers)
    return _control(SYN_STREAM, FLAG_FIN if fin else 0, payload)


def syn_reply_frame(comp: HeaderCompressor, stream_id: int, headers: Headers, fin: bool = False) -> bytes:
    return _control(SYN_REPLY, FLAG_FIN if fin else 0, struct.pack(">I", stream_id) + comp.compress(headers))


def rst_stream_frame(stream_id: int, status: int) -> bytes:
    return _control(RST_STREAM, 0, struct.pack(">II", stream_id, status))


def ping_frame(ping_id: int) -> bytes:
    return _control(PING, 0, struct.pack(">I", ping_id))


def goaway_frame(last_stream_id: int, status: int = 0) -> bytes:
    return _control(GOAWAY, 0, struct.pack(">II", last_stream_id, status))


def parse_frame(head: bytes, payload: bytes, decomp: HeaderDecompressor) -> Frame:
    """Decode one frame from its 8-byte head and its payload."""
    first, second = struct.unpack(">II", head)
    flags = second >> 24
    if not first & 0x80000000:
        return Frame(0, flags, first & 0x7FFFFFFF, payload)
    version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
    if version != VERSION:
        raise ProtocolError(f"SPDY version {version} is not supported (only 3)")

    def need(n: int) -> None:
        if len(payload) < n:
            raise ProtocolError(f"control frame {kind} too short ({len(payload)} bytes)")

    if kind == SYN_STREAM:
        need(10)
        sid, assoc, pri = struct.unpack_from(">IIB", payload)
        return Frame(kind, flags, sid & 0x7FFFFFFF, headers=decomp.decompress(payload[10:]),
                     associated_id=assoc & 0x7FFFFFFF, priority=pri >> 5)
    if kind in (SYN_REPLY, HEADERS):
        need(4)
        (sid,) = struct.unpack_from(">I", payload)
        return Frame(kind, flags, sid & 0x7FFFFFFF, headers=decomp.decompress(payload[4:]))
    if kind in (RST_STREAM, WINDOW_UPDATE):
        need(8)
        sid, status = struct.unpack_from(">II", payload)
        return Frame(kind, flags, sid & 0x7FFFFFFF, status=status & 0x7FFFFFFF)
    if kind == PING:
        need(4)
        return Frame(kind, flags, status=struct.unpack_from(">I", payload)[0])
    if kind == GOAWAY:
        need(4)
        last = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
        status = struct.unpack_from(">I", payload, 4)[0] if len(payload) >= 8 else 0
        return Frame(kind, flags, last, status=status)
    if kind == SETTINGS:
        need(4)
        (count,) = struct.unpack_from(">I", payload)
        need(4 + 8 * count)
        entries = []
        for i in range(count):
            fid, value = struct.unpack_from(">II", payload, 4 + 8 * i)
            entries.append((fid >> 24, fid & 0xFFFFFF, value))
        return Frame(kind, flags, settings=entries)
    return Frame(kind, flags, data=payload)  # unknown control frames are ignored (spec §2.2.1)


class Transport(Protocol):
    """A byte pipe under a session: a TCP connection, or a WebSocket carrying SPDY."""

    async def read_exactly(self, n: int) -> bytes:
        """`n` bytes; raises EOFError once the peer is gone."""
        ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


class StreamTransport:
    """Transport over asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 on_traffic: Callable[[], None] = no_traffic_hook) -> None:
        self.reader = reader
        self.writer = writer
        self.on_traffic = on_traffic

    async def read_exactly(self, n: int) -> bytes:
        try:
            data = await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise EOFError from exc
        self.on_traffic()
        return data

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.on_traffic()
            self.writer.write(data)

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except ConnectionError as exc:
            raise EOFError from exc

    def close(self) -> None:
        self.writer.close()


class Stream:
    """One SPDY stream: a byte queue in, DATA frames out, FIN as half-close in each direction."""

    def __init__(self, session: Session, stream_id: int, headers: Headers) -> None:
        self.session = session
        self.id = stream_id
        self.headers = headers
        self.reply_headers: Headers | None = None
        self.replied = asyncio.Event()
        self._inbound: asyncio.Queue[bytes] = asyncio.Queue(STREAM_BUFFER)
        self.remote_closed = False  # the reader saw the end
        self.fin_received = False
        self.local_closed = False
        self.reset = False

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    async def read(self) -> bytes:
        """The next chunk of data; b"" once the peer closed its side (or the session ended)."""
        if self._inbound.empty() and (self.remote_closed or self.reset or self.session.closed.is_set()):
            return b""
        chunk = await self._inbound.get()
        if not chunk:
            self.remote_closed = True
        return chunk

    async def write(self, data: bytes) -> None:
        if self.local_closed or self.reset:
            raise EOFError(f"stream {self.id} is closed")
        view = memoryview(data)
        for start in range(0, len(view), 32 * 1024):
            self.session.send(data_frame(self.id, bytes(view[start:start + 32 * 1024])))
        await self.session.drain()

    async def close(self) -> None:
        """Half-close our side."""
        if not self.local_closed and not self.reset and not self.session.closed.is_set():
            self.local_closed = True
            self.session.send(data_frame(self.id, b"", fin=True))
            await self.session.drain()
        self.local_closed = True
        self.session.forget_if_done(self)

    def send_reset(self, status: int = CANCEL) -> None:
        if not self.reset:
            self.reset = True
            self.session.send(rst_stream_frame(self.id, status))
            self._end()

    def reply(self, headers: Headers | None = None) -> None:
        if not self.replied.is_set():
            self.replied.set()
            self.session.send(syn_reply_frame(self.session.compressor, self.id, headers or {}))

    async def _deliver(self, data: bytes) -> None:
        if self.remote_closed or self.reset:
            return
        await self._inbound.put(data)

    def _end(self) -> None:
        """Wake readers: nothing more will come."""
        with contextlib.suppress(asyncio.QueueFull):
            self._inbound.put_nowait(b"")


StreamHandler = Callable[[Stream], Awaitable[None] | None]


class Session:
    """One SPDY connection. The server side replies to every stream the peer opens (as kubelet does)
    and hands it to `on_stream`; the client side (tests) opens streams and waits for replies."""

    def __init__(self, transport: Transport, *, server: bool, on_stream: StreamHandler | None = None,
                 auto_reply: bool = True) -> None:
        self.transport = transport
        self.server = server
        self.on_stream = on_stream
        self.auto_reply = auto_reply
        self.compressor = HeaderCompressor()
        self.decompressor = HeaderDecompressor()
        self.streams: dict[int, Stream] = {}
        self.closed = asyncio.Event()
        self.goaway_received = False
        self._next_id = 2 if server else 1
        self._last_remote_id = 0
        self._next_ping = 2 if server else 1
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._serve_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._serve_task = asyncio.get_running_loop().create_task(self.serve())

    def send(self, frame: bytes) -> None:
        if not self.closed.is_set():
            self.transport.write(frame)

    async def drain(self) -> None:
        try:
            await self.transport.drain()
        except EOFError:
            self._shut()

    async def serve(self) -> None:
        """Read frames until the peer goes away or breaks the protocol."""
        try:
            while True:
                head = await self.transport.read_exactly(8)
                length = struct.unpack(">I", head[4:])[0] & 0xFFFFFF
                payload = await self.transport.read_exactly(length) if length else b""
                await self._dispatch(parse_frame(head, payload, self.decompressor))
        except (EOFError, ProtocolError, ConnectionError):
            pass
        finally:
            self._shut()

    def _shut(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for stream in self.streams.values():
            stream._end()
            stream.replied.set()
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(EOFError("session closed"))

    def forget_if_done(self, stream: Stream) -> None:
        """Drop a stream closed in both directions so long port-forward sessions do not accumulate."""
        if stream.local_closed and stream.fin_received:
            self.streams.pop(stream.id, None)

    async def _dispatch(self, frame: Frame) -> None:
        if frame.kind == 0:
            stream = self.streams.get(frame.stream_id)
            if stream is None:
                self.send(rst_stream_frame(frame.stream_id, INVALID_STREAM))
                return
            if frame.data:
                await stream._deliver(frame.data)
            if frame.flags & FLAG_FIN:
                stream.fin_received = True
                self.forget_if_done(stream)
                await stream._deliver(b"")
        elif frame.kind == SYN_STREAM:
            await self._open_remote(frame)
        elif frame.kind == SYN_REPLY:
            stream = self.streams.get(frame.stream_id)
            if stream is not None:
                stream.reply_headers = frame.headers
                stream.replied.set()
                if frame.flags & FLAG_FIN:
                    await stream._deliver(b"")
        elif frame.kind == RST_STREAM:
            stream = self.streams.pop(frame.stream_id, None)
            if stream is not None:
                stream.reset = True
                stream.replied.set()
                stream._end()
        elif frame.kind == PING:
            fut = self._pings.pop(frame.status, None)
            if fut is not None:
                fut.set_result(None)
            elif (frame.status & 1) != (self._next_ping & 1):
                self.send(ping_frame(frame.status))
        elif frame.kind == GOAWAY:
            self.goaway_received = True
        elif frame.kind == HEADERS and frame.flags & FLAG_FIN:
            stream = self.streams.get(frame.stream_id)
            if stream is not None:
                await stream._deliver(b"")

    async def _open_remote(self, frame: Frame) -> None:
        sid = frame.stream_id
        if sid == 0 or (sid & 1) == (self._next_id & 1) or sid <= self._last_remote_id:
            self.send(rst_stream_frame(sid, PROTOCOL_ERROR))
            return
        if sid in self.streams:
            self.send(rst_stream_frame(sid, STREAM_IN_USE))
            return
        self._last_remote_id = sid
        stream = Stream(self, sid, frame.headers)
        self.streams[sid] = stream
        if frame.flags & FLAG_FIN:
            stream.fin_received = True
            await stream._deliver(b"")
        if frame.flags & FLAG_UNIDIRECTIONAL:
            stream.local_closed = True
        if self.auto_reply:
            stream.reply()
        if self.on_stream is not None:
            result = self.on_stream(stream)
            if result is not None:
                await result

    async def open_stream(self, headers: Headers, fin: bool = False) -> Stream:
        """Open a stream and wait for the peer's SYN_REPLY (raises EOFError when it resets it)."""
        sid = self._next_id
        self._next_id += 2
        stream = Stream(self, sid, headers)
        self.streams[sid] = stream
        self.send(syn_stream_frame(self.compressor, sid, headers, fin=fin))
        stream.local_closed = fin
        await self.drain()
        await stream.replied.wait()
        if stream.reset or stream.reply_headers is None:
            raise EOFError(f"stream {sid} refused")
        return stream

    async def ping(self) -> None:
        pid = self._next_ping
        self._next_ping += 2
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[pid] = fut
        self.send(ping_frame(pid))
        await self.drain()
        await fut

    async def close(self) -> None:
        """GOAWAY, then drop the connection."""
        if not self.closed.is_set():
            self.send(goaway_frame(self._last_remote_id))
            with contextlib.suppress(EOFError, ConnectionError):
                await self.transport.drain()
        self._shut()
        self.transport.close()
        if self._serve_task is not None and self._serve_task is not asyncio.current_task():
            self._serve_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._serve_task
