"""Watch the CNI conf and bin dirs with inotify, plus a periodic rescan as a safety net.

inotify misses what happens to a directory that is deleted and made again, and some filesystems send
nothing at all, so the rescan both re-arms the watches and catches changes inotify did not report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence

from crishim import inotify

log = logging.getLogger(__name__)

WATCH_MASK = (inotify.IN_MODIFY | inotify.IN_ATTRIB | inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_FROM
              | inotify.IN_MOVED_TO | inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_DELETE_SELF
              | inotify.IN_MOVE_SELF)
# Coalesce a burst of events (a copy writes many times) into one reload.
DEBOUNCE_SECONDS = 0.05


def fingerprint(dirs: Sequence[str]) -> tuple[object, ...]:
    """What a rescan compares: each dir's identity and each entry's name, size, mtime and inode."""
    items: list[object] = []
    for d in dirs:
        try:
            st = os.stat(d)
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            items.append((d, None))
            continue
        items.append((d, st.st_ino))
        for entry in entries:
            with contextlib.suppress(OSError):
                est = entry.stat()
                items.append((entry.name, est.st_size, est.st_mtime_ns, est.st_ino))
    return tuple(items)


class DirWatcher:
    """Call `on_change` (a coroutine function) whenever one of `dirs` may have changed."""

    def __init__(self, dirs: Sequence[str], on_change: Callable[[], object],
                 rescan_interval: float) -> None:
        self._dirs = list(dirs)
        self._on_change = on_change
        self._interval = rescan_interval
        self._fd = -1
        self._watched: dict[int, str] = {}
        self._pending: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._last = fingerprint(self._dirs)

    def start(self) -> None:
        try:
            self._fd = inotify.init()
        except OSError as exc:
            log.warning("inotify unavailable; relying on the periodic rescan", extra={"error": str(exc)})
        else:
            asyncio.get_running_loop().add_reader(self._fd, self._drain)
            self._arm()
        self._task = asyncio.get_running_loop().create_task(self._rescan_loop())

    def _arm(self) -> None:
        """Add a watch for every dir that exists and is not watched yet (cheap when all are)."""
        if self._fd < 0:
            return
        known = set(self._watched.values())
        for d in self._dirs:
            if d in known or not os.path.isdir(d):
                continue
            with contextlib.suppress(OSError):
                self._watched[inotify.add_watch(self._fd, d, WATCH_MASK)] = d

    def _drain(self) -> None:
        for event in inotify.read_events(self._fd):
            if event.mask & (inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF):
                self._watched.pop(event.wd, None)
        self._schedule()

    def _schedule(self) -> None:
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(DEBOUNCE_SECONDS, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self._last = fingerprint(self._dirs)
        self._arm()
        asyncio.get_running_loop().create_task(self._run_callback())

    async def _run_callback(self) -> None:
        try:
            result = self._on_change()
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            log.exception("reload after a CNI directory change failed")

    async def _rescan_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            current = await asyncio.to_thread(fingerprint, self._dirs)
            self._arm()
            if current != self._last:
                self._last = current
                await self._run_callback()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._pending is not None:
            self._pending.cancel()
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
