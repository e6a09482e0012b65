"""Disk usage of a container's writable layer (its overlay upper dir), as `du` counts it."""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class FsUsage:
    timestamp: int
    mountpoint: str
    used_bytes: int
    inodes_used: int


def mountpoint_of(path: str) -> str:
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def dir_usage(path: str) -> FsUsage | None:
    """Allocated bytes and inodes below `path` (hard links counted once); None when it is gone.

    Blocking: walks the whole tree, call it off the event loop.
    """
    if not os.path.isdir(path):
        return None
    seen: set[int] = set()
    used = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            continue
        if st.st_ino not in seen:
            seen.add(st.st_ino)
            used += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            try:
                stack.extend(e.path for e in os.scandir(current))
            except (FileNotFoundError, NotADirectoryError):
                continue
    return FsUsage(timestamp=time.time_ns(), mountpoint=mountpoint_of(path), used_bytes=used,
                   inodes_used=len(seen))
