"""The `/metrics` HTTP endpoint, served on the event loop.

Serving on the loop (rather than prometheus_client's own server thread) means collectors read the managers'
state on the same thread that changes it. The endpoint speaks just enough HTTP/1.1 for Prometheus and curl:
one GET per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from crishim.telemetry.metrics import REGISTRY

log = logging.getLogger(__name__)

_REQUEST_TIMEOUT = 10.0
_MAX_HEADER_BYTES = 16 * 1024


class AddressError(ValueError):
    """A metrics address that cannot be listened on."""


def parse_address(address: str) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port"; the message says what a valid address looks like."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise AddressError(f"metrics address {address!r}: expected host:port, e.g. 127.0.0.1:9090")
    return host.removeprefix("[").removesuffix("]"), int(port_text)


def _response(status: str, body: bytes, content_type: str) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


class MetricsServer:
    """Serves REGISTRY at http://address/metrics; an empty address turns it off."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when the configured port is 0)."""
        if self._server is None:
            raise RuntimeError("the metrics endpoint is not running")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on the configured address, or on `sock` when given (made in another namespace)."""
        if sock is not None:
            self._server = await asyncio.start_server(self._handle, sock=sock, limit=_MAX_HEADER_BYTES)
        elif self.address:
            host, port = parse_address(self.address)
            self._server = await asyncio.start_server(self._handle, host, port, limit=_MAX_HEADER_BYTES)
        else:
            return
        log.info("metrics endpoint listening", extra={"address": self._server.sockets[0].getsockname()})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            writer.write(self._answer(head.split(b"\r\n", 1)[0].decode("latin-1")))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, request_line: str) -> bytes:
        parts = request_line.split()
        if len(parts) != 3:
            return _response("400 Bad Request", b"malformed request line\n", "text/plain")
        method, target, _ = parts
        if target.split("?", 1)[0] != "/metrics":
            return _response("404 Not Found", b"only /metrics is served here\n", "text/plain")
        if method != "GET":
            return _response("405 Method Not Allowed", b"use GET\n", "text/plain")
        return _response("200 OK", generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
