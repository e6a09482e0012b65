"""An append-only log of records: one JSON line per change, the last line of a key wins.

Why not a file per record: every atomic rewrite (temp file, rename) allocates an inode and frees one. On
ext4 without a journal, inode allocation skips inodes freed in the last minute by scanning past them, so
with pods coming and going every record write got slower (perf: a third of crishim's CPU per pod). An
append allocates nothing. A process crash loses nothing written (one `write` per line); a crash in the
middle of a line leaves a torn tail, which `open` cuts off. The log is rewritten with only the live lines
(atomically, fsynced) when opened and whenever it has grown to COMPACT_FACTOR times their size.

Every file operation runs on one thread of its own, in submission order, so appends and compaction never
interleave and the bookkeeping needs no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from crishim.store.atomic import write_bytes_atomic

log = logging.getLogger(__name__)

COMPACT_FACTOR = 4
COMPACT_MIN_BYTES = 1 << 20


def encode(key: str, record: dict[str, Any] | None) -> bytes:
    """One line; a None record deletes the key."""
    return (json.dumps({"id": key, "record": record}, separators=(",", ":")) + "\n").encode()


def replay(data: bytes) -> tuple[dict[str, bytes], int]:
    """The last line of each live key, and the length of the whole lines (a torn tail is not counted)."""
    live: dict[str, bytes] = {}
    end = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        end += len(line)
        try:
            entry = json.loads(line)
            key = entry["id"]
        except (ValueError, KeyError, TypeError):
            log.error("skipping an unreadable line of a record log", extra={"line": line[:200]})
            continue
        if entry.get("record") is None:
            live.pop(key, None)
        else:
            live[key] = line
    return live, end


class RecordLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._live: dict[str, bytes] = {}
        self._live_bytes = 0
        self._size = 0
        self._fd = -1
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crishim-records")

    async def open(self) -> dict[str, dict[str, Any]]:
        """Replay the log, cut a torn tail, compact; key -> its last record."""
        await self._run(self._open)
        return {key: json.loads(line)["record"] for key, line in self._live.items()}

    async def put(self, key: str, record: dict[str, Any]) -> None:
        await self._run(self._append, key, encode(key, record), True)

    async def delete(self, key: str) -> None:
        await self._run(self._append, key, encode(key, None), False)

    async def close(self) -> None:
        await self._run(self._close)
        self._io.shutdown()

    async def _run(self, fn: Callable[..., None], *args: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def _open(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        self._live, end = replay(data)
        self._live_bytes = sum(map(len, self._live.values()))
        if end < len(data):
            log.warning("cut a torn last line off the record log",
                        extra={"path": str(self.path), "bytes": len(data) - end})
        self._compact()

    def _append(self, key: str, line: bytes, live: bool) -> None:
        self._live_bytes -= len(self._live.pop(key, b""))
        if live:
            self._live[key] = line
            self._live_bytes += len(line)
        if self._fd < 0:
            self._compact()  # the last append failed part-way: rewrite from memory, which has it all
            return
        view = memoryview(line)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            self._close()
            raise
        self._size += len(line)
        if self._size > max(COMPACT_MIN_BYTES, COMPACT_FACTOR * self._live_bytes):
            self._compact()

    def _compact(self) -> None:
        content = b"".join(self._live.values())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.path, content)
        self._close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._size = self._live_bytes = len(content)

    def _close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
