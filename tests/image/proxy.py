"""A tiny HTTP proxy in front of the test registry, for faults a real registry cannot produce.

It forwards GETs (one request per connection, `Connection: close`) and can flip a byte of every blob
of at least `tamper_min_bytes` (`tamper`), send blobs chunked without a Content-Length (`chunked`), or
stall inside any blob of at least `stall_min_bytes`: it sends the blob in `stall_pauses + 1` pieces and
pauses `stall_seconds` after each but the last (None: until the proxy stops), or answer 500 for the blob
`broken_blob` names (a digest), or hold the request for the blob `held_blob` names until `release_held`
(`held` is set once it came). It counts the requests it saw per path.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator

import httpx

_PASS_HEADERS = ("content-type", "docker-content-digest", "www-authenticate", "location")


class RegistryProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.tamper = False
        self.tamper_min_bytes = 0
        self.chunked = False
        self.stall_min_bytes = 0
        self.stall_pauses = 1
        self.stall_seconds: float | None = None
        self.broken_blob = ""
        self.held_blob = ""
        self.held = asyncio.Event()
        self.stalled = asyncio.Event()
        self.requests: collections.Counter[str] = collections.Counter()
        self._server: asyncio.Server | None = None
        self._client = httpx.AsyncClient(timeout=30)
        self._release = asyncio.Event()
        self._release_held = asyncio.Event()

    @property
    def host(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    def blob_requests(self) -> int:
        return sum(n for path, n in self.requests.items() if "/blobs/" in path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, path, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            headers = {}
            for line in head.decode().split("\r\n")[1:]:
                if ":" in line:
                    key, value = line.split(":", 1)
                    if key.lower() in ("accept", "authorization"):
                        headers[key] = value.strip()
            self.requests[path] += 1
            if self.broken_blob and path.endswith(f"/blobs/{self.broken_blob}"):
                writer.write(b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n"
                             b"Content-Length: 0\r\n\r\n")
                await writer.drain()
                return
            if self.held_blob and path.endswith(f"/blobs/{self.held_blob}"):
                self.held.set()
                await self._release_held.wait()
            response = await self._client.request(method, f"{self.upstream}{path}", headers=headers)
            body = response.content
            is_blob = "/blobs/" in path and response.status_code == 200
            if is_blob and self.tamper and len(body) >= self.tamper_min_bytes:
                body = body[:-1] + bytes([body[-1] ^ 0xFF])
            lines = [f"HTTP/1.1 {response.status_code} {response.reason_phrase}", "Connection: close"]
            chunked = is_blob and self.chunked
            lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")
            lines += [f"{k}: {v}" for k, v in response.headers.items() if k.lower() in _PASS_HEADERS]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            stall = is_blob and 0 < self.stall_min_bytes <= len(body)
            pieces = self.stall_pauses + 1 if stall else 1
            step = -(-len(body) // pieces)
            for i in range(pieces):
                piece = body[i * step:(i + 1) * step]
                if piece:
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                await writer.drain()
                if i < pieces - 1:
                    self.stalled.set()
                    await self._pause()
            if chunked:
                writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _pause(self) -> None:
        if self.stall_seconds is None:
            await self._release.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), self.stall_seconds)

    def release_held(self) -> None:
        self._release_held.set()

    async def start(self) -> RegistryProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        self._release.set()
        self._release_held.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self._client.aclose()


@contextlib.asynccontextmanager
async def registry_proxy(upstream: str) -> AsyncIterator[RegistryProxy]:
    proxy = await RegistryProxy(upstream).start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@contextlib.contextmanager
def registry_proxy_thread(upstream: str) -> Iterator[RegistryProxy]:
    """The proxy on an event loop of its own thread, for a test whose puller is a crishim process."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="registry-proxy", daemon=True)
    thread.start()

    async def start() -> RegistryProxy:
        return await RegistryProxy(upstream).start()

    try:
        proxy = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        try:
            yield proxy
        finally:
            asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
