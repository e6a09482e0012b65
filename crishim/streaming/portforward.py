"""Port-forward over SPDY (`portforward.k8s.io`): a data and an error stream per forwarded connection,
paired by their `requestID` header, each pair bridged to a TCP connection inside the pod."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from crishim.streaming.spdy import Session, Stream

log = logging.getLogger(__name__)

PAIR_WAIT = 30.0  # seconds between a pair's first and second stream, as kubelet's default
READ_SIZE = 32 * 1024

Connector = Callable[[int], Awaitable[socket.socket]]
"""Opens a connected TCP socket to a port of the pod (in its network namespace)."""


@dataclass
class _Pair:
    request_id: str
    data: Stream | None = None
    error: Stream | None = None
    timer: asyncio.TimerHandle | None = None


@dataclass
class PortForwarder:
    """Serves one SPDY session; `allowed_ports` (empty: any) are those the CRI request named."""

    connect: Connector
    pod: str
    allowed_ports: frozenset[int] = frozenset()
    pairs: dict[str, _Pair] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def on_stream(self, stream: Stream) -> None:
        kind = stream.header("streamType")
        request_id = stream.header("requestID") or str(stream.id)
        if kind not in ("data", "error"):
            stream.send_reset()
            return
        pair = self.pairs.get(request_id)
        if pair is None:
            pair = self.pairs[request_id] = _Pair(request_id)
            pair.timer = asyncio.get_running_loop().call_later(PAIR_WAIT, self._expire, request_id)
        if getattr(pair, kind) is not None:
            stream.send_reset()
            return
        setattr(pair, kind, stream)
        if pair.data is not None and pair.error is not None:
            del self.pairs[request_id]
            if pair.timer is not None:
                pair.timer.cancel()
            self._spawn(self._forward(pair.data, pair.error))

    def _expire(self, request_id: str) -> None:
        pair = self.pairs.pop(request_id, None)
        if pair is None:
            return
        for stream in (pair.data, pair.error):
            if stream is not None:
                stream.send_reset()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _forward(self, data: Stream, error: Stream) -> None:
        try:
            port = _port(data.header("port"))
            if self.allowed_ports and port not in self.allowed_ports:
                raise ValueError(f"port {port} was not named in the PortForward request")
            sock = await self.connect(port)
        except (OSError, ValueError) as exc:
            await self._fail(data, error, f"error forwarding port {data.header('port')} to pod "
                                          f"{self.pod}: {exc}")
            return
        try:
            reader, writer = await asyncio.open_connection(sock=sock)
        except OSError as exc:
            sock.close()
            await self._fail(data, error, f"error forwarding port {port} to pod {self.pod}: {exc}")
            return
        try:
            await _bridge(data, reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(EOFError):
                await error.close()

    async def _fail(self, data: Stream, error: Stream, message: str) -> None:
        log.info("port-forward failed", extra={"pod": self.pod, "error": message})
        with contextlib.suppress(EOFError):
            await error.write(message.encode())
            await error.close()
            await data.close()

    async def close(self) -> None:
        for pair in self.pairs.values():
            if pair.timer is not None:
                pair.timer.cancel()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ValueError(f"invalid port {value!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return port


async def _bridge(data: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy both ways; done when the pod side ends (the client's FIN only half-closes towards the pod)."""
    async def to_pod() -> None:
        while chunk := await data.read():
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    upstream = asyncio.ensure_future(to_pod())
    try:
        while chunk := await reader.read(READ_SIZE):
            await data.write(chunk)
        await data.close()
    except (OSError, EOFError):
        data.send_reset()
    finally:
        upstream.cancel()
        await asyncio.gather(upstream, return_exceptions=True)


async def serve(session: Session, forwarder: PortForwarder) -> None:
    """Run the session until the client leaves, then stop every forward."""
    session.on_stream = forwarder.on_stream
    try:
        await session.serve()
    finally:
        await forwarder.close()
        await session.close()
