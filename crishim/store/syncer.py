"""Group commit: make records durable shortly after they are written, off the request path.

A killed crishim loses nothing that was written (the page cache outlives the process); an fsync only
guards against a power cut, and it stalls every other metadata operation on the filesystem until the
journal commits. So records are written at once and fsynced here in batches. Marks are gathered for
`window` seconds before a batch is taken: the writes of one pod (its record log appends and CNI cache
file) and of the pods created beside it share one batch, and a file written again within the window is
fsynced once. A file's directory is fsynced in every batch (new names); the directory above it
only the first time, since it changes only when that directory is created.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

RETRY_DELAY = 1.0
WINDOW = 0.05


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return  # removed since it was written: nothing left to make durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_paths(paths: set[Path], settled_dirs: set[Path] | None = None) -> None:
    """fsync each file, each directory holding one, and the directories above those that are not in
    `settled_dirs` yet (they are added to it)."""
    parents = {path.parent for path in paths}
    above = {directory.parent for directory in parents} - (settled_dirs or set())
    for path in paths:
        _fsync_path(path)
    for directory in parents | above:
        _fsync_path(directory, directory=True)
    if settled_dirs is not None:
        settled_dirs |= above


class Syncer:
    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._settled_dirs: set[Path] = set()
        self._dirty: set[Path] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def mark(self, path: str | Path) -> None:
        self._dirty.add(Path(path))
        self._idle.clear()
        self._wake.set()

    async def flush(self) -> None:
        """Wait until everything marked so far is durable."""
        if self._task is None:
            await asyncio.to_thread(sync_paths, self._take(), self._settled_dirs)
            return
        await self._idle.wait()

    def _take(self) -> set[Path]:
        batch, self._dirty = self._dirty, set()
        return batch

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.window)
            self._wake.clear()
            batch = self._take()
            try:
                await asyncio.to_thread(sync_paths, batch, self._settled_dirs)
            except OSError:
                log.exception("could not make records durable; retrying")
                self._dirty |= batch
                await asyncio.sleep(RETRY_DELAY)
                self._wake.set()
                continue
            if not self._dirty:
                self._idle.set()

    async def close(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
