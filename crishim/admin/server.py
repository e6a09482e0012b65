"""The daemon's side of the admin socket: root-only, one import per connection.

The socket is made 0600 (bound under a umask, so it never exists with a wider mode) and every caller's
uid is checked again with SO_PEERCRED: an import writes setuid binaries into the store, so only root may
ask for one. The archive streams in over the connection, so the daemon never opens a path a client
names and `docker save img | crishim images import -` works like a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crishim.admin.protocol import CALL_IMPORT, FRAME_HEADER, MAX_FRAME, line
from crishim.errors import CrishimError, InvalidArgument
from crishim.image import ImageManager
from crishim.image.archive import ImportCancelled, ImportMonitor

log = logging.getLogger(__name__)

_CLOSE_TIMEOUT = 10.0
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


def listen_private(path: Path) -> socket.socket:
    """A listening unix socket at `path` that only root can connect to."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.listen(16)
    sock.setblocking(False)
    return sock


def peer_uid(writer: asyncio.StreamWriter) -> int:
    sock: socket.socket = writer.get_extra_info("socket")
    return int(_PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))[1])


class FrameStream(io.RawIOBase):
    """The archive frames of one connection as a file for a worker thread; each read waits on the loop.

    Reading through the loop (rather than buffering ahead) keeps backpressure: the client sends no
    faster than the import stores.
    """

    def __init__(self, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop,
                 idle_timeout: float) -> None:
        super().__init__()
        self._reader = reader
        self._loop = loop
        self._idle_timeout = idle_timeout
        self._chunk = memoryview(b"")
        self._at_end = False
        self.ended = asyncio.Event()  # set on the loop once the end frame arrived

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._chunk:
            if self._at_end:
                return 0
            data = asyncio.run_coroutine_threadsafe(self._next_frame(), self._loop).result()
            if not data:
                self._at_end = True
                return 0
            self._chunk = memoryview(data)
        size = min(len(buffer), len(self._chunk))
        buffer[:size] = self._chunk[:size]
        self._chunk = self._chunk[size:]
        return size

    async def _next_frame(self) -> bytes:
        try:
            async with asyncio.timeout(self._idle_timeout):
                (size,) = FRAME_HEADER.unpack(await self._reader.readexactly(FRAME_HEADER.size))
                if size > MAX_FRAME:
                    raise InvalidArgument(f"archive frame of {size} bytes: at most {MAX_FRAME} are allowed")
                data = await self._reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ImportCancelled("the client went away before the end of the archive") from exc
        except TimeoutError as exc:  # a stalled client must not pin the import's content forever
            raise ImportCancelled(f"no archive data for {self._idle_timeout:.0f}s") from exc
        if not data:
            self.ended.set()
        return data


class AdminServer:
    def __init__(self, path: Path, images: ImageManager, request_timeout: float) -> None:
        self.path = path
        self.images = images
        self.request_timeout = request_timeout  # for the request line: a silent client is let go
        self._server: asyncio.Server | None = None
        self._calls: dict[asyncio.Task[None], tuple[ImportMonitor, asyncio.StreamWriter]] = {}

    async def start(self) -> None:
        """Listen on `path`; the caller has claimed it (no other crishim serves there)."""
        sock = listen_private(self.path)
        # The stream buffer holds a whole frame: a smaller one would pause the socket many times a frame.
        self._server = await asyncio.start_unix_server(self._handle, sock=sock, limit=MAX_FRAME)
        log.info("serving the admin socket", extra={"socket": str(self.path)})

    async def close(self) -> None:
        """Stop listening and cancel the imports in flight; they clean up before this returns."""
        if self._server is None:
            return
        self._server.close()
        for monitor, writer in self._calls.values():
            monitor.cancelled.set()
            _send(writer, {"error": "crishim is stopping: the import was cancelled", "code": "Unavailable"})
            writer.close()  # a thread waiting for the next frame sees the end of the connection
        if self._calls:
            await asyncio.wait(list(self._calls), timeout=_CLOSE_TIMEOUT)
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        monitor = ImportMonitor(report=_reporter(writer))
        self._calls[task] = (monitor, writer)
        try:
            uid = peer_uid(writer)
            if uid != 0:
                log.warning("admin call refused", extra={"uid": uid})
                _send(writer, {"error": f"permission denied: uid {uid} is not root",
                               "code": "PermissionDenied"})
                return
            try:
                async with asyncio.timeout(self.request_timeout):
                    request = await reader.readline()
            except (TimeoutError, ValueError) as exc:  # ValueError: a line over the stream's limit
                raise InvalidArgument(f"no request line within {self.request_timeout:g}s and "
                                      f"{MAX_FRAME} bytes") from exc
            call = _call(request)
            if call != CALL_IMPORT:
                raise InvalidArgument(f"call: unknown admin call {call!r} (known: {CALL_IMPORT!r})")
            await self._import(reader, writer, monitor)
        except CrishimError as exc:
            _send(writer, {"error": str(exc), "code": type(exc).__name__})
        except ConnectionError:
            pass  # the client is gone: nobody to answer
        except Exception as exc:
            log.exception("admin call failed")
            _send(writer, {"error": f"internal error: {exc}", "code": "Internal"})
        finally:
            del self._calls[task]
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _import(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      monitor: ImportMonitor) -> None:
        # Like a pull, an import fails when nothing arrives for this long (not a limit on the whole).
        stream = FrameStream(reader, asyncio.get_running_loop(), self.images.pull_progress_timeout)
        watch = asyncio.create_task(_watch_client(reader, stream, monitor))
        try:
            records = await self.images.import_archive(io.BufferedReader(stream, MAX_FRAME), monitor)
        except ImportCancelled as exc:
            log.info("image import cancelled: %s", exc)
            raise
        finally:
            watch.cancel()
        log.info("images imported", extra={"images": [r.id for r in records]})
        _send(writer, {"images": [{"id": r.id, "repo_tags": r.repo_tags, "repo_digests": r.repo_digests}
                                  for r in records]})


async def _watch_client(reader: asyncio.StreamReader, stream: FrameStream, monitor: ImportMonitor) -> None:
    """Once the archive is in, the client only waits: data or the end of the connection means it left."""
    await stream.ended.wait()
    with contextlib.suppress(ConnectionError):
        await reader.read(1)
    monitor.cancelled.set()


def _reporter(writer: asyncio.StreamWriter) -> Callable[[dict[str, Any]], None]:
    """Progress events to the client, from the loop or from the import's worker threads."""
    loop = asyncio.get_running_loop()

    def report(event: dict[str, Any]) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a worker thread: the writer belongs to the loop
            loop.call_soon_threadsafe(_send, writer, event)
        else:
            _send(writer, event)

    return report


def _call(request: bytes) -> str:
    try:
        message = json.loads(request)
    except ValueError as exc:
        raise InvalidArgument(f"the request line is not JSON: {exc}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("call"), str):
        raise InvalidArgument('the request line must be a JSON object with a string "call"')
    return str(message["call"])


def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    if not writer.is_closing():
        writer.write(line(message))
