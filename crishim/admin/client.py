"""The client side of the admin socket, for `crishim images import` while crishim runs.

Blocking code: the CLI has nothing else to do. The archive is sent by a thread while the main thread
prints the daemon's progress, so a daemon answering early (a bad archive) is heard at once.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crishim.admin.protocol import CALL_IMPORT, FRAME_HEADER, MAX_FRAME, line


class AdminError(Exception):
    """The daemon refused or failed the call; the message is the daemon's."""


def connect(path: Path) -> socket.socket | None:
    """A connection to the crishim serving `path`, or None when none does.

    PermissionError (the caller is not root) is raised: falling back to the offline import would hide it.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except BaseException:
        sock.close()
        raise
    return sock


class _FrameWriter(io.RawIOBase):
    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), MAX_FRAME):
            chunk = view[start:start + MAX_FRAME]
            self._sock.sendall(FRAME_HEADER.pack(len(chunk)))
            self._sock.sendall(chunk)
        return len(view)


def _send_archive(sock: socket.socket, source: str) -> None:
    """Stream `source` ("-": stdin; a layout directory as a tar made on the fly), then the end frame."""
    out = _FrameWriter(sock)
    if source == "-":
        _copy(sys.stdin.fileno(), out)
    elif Path(source).is_dir():
        with tarfile.open(fileobj=out, mode="w|", bufsize=MAX_FRAME) as tar:
            tar.add(source, arcname=".")
    else:
        with open(source, "rb") as archive:
            _copy(archive.fileno(), out)
    sock.sendall(FRAME_HEADER.pack(0))


def _copy(fd: int, out: _FrameWriter) -> None:
    """Send what arrives as it arrives: a pipe (`docker save | ...`) need not fill a whole frame. Plain
    reads of the fd: a buffered stdin would hang interpreter exit when the daemon answered early."""
    while chunk := os.read(fd, MAX_FRAME):
        out.write(chunk)


def import_archive(sock: socket.socket, source: str,
                   report: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Import `source` into the daemon behind `sock`; `report` gets its progress events. Returns the
    images imported ({"id", "repo_tags", "repo_digests"})."""
    if source != "-" and not Path(source).exists():
        raise FileNotFoundError(f"{source}: no such file or directory")
    failure: list[OSError] = []

    def send() -> None:
        try:
            sock.sendall(line({"call": CALL_IMPORT}))
            _send_archive(sock, source)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon answered before the end (an error): the reader shows its answer
        except OSError as exc:  # reading the archive failed: give up, which cancels the import
            failure.append(exc)
            sock.shutdown(socket.SHUT_RDWR)

    with sock, sock.makefile("rb") as answers:
        sender = threading.Thread(target=send, name="crishim-import-send", daemon=True)
        sender.start()
        for raw in answers:
            message = json.loads(raw)
            if "event" in message:
                report(message)
            elif "error" in message:
                raise AdminError(str(message["error"]))
            else:
                images: list[dict[str, Any]] = message["images"]
                return images
    if failure:
        raise failure[0]
    raise AdminError("crishim closed the admin connection without an answer (did it stop?)")
