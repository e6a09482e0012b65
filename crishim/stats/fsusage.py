"""Disk usage of a container's writable layer (its overlay upper dir), as `du` counts it, and the size of
the filesystem it lives on (what cAdvisor reports as the container's filesystem limit and inodes)."""

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
    device: str = ""  # the mount source of `mountpoint`, as cAdvisor's `device` label
    capacity_bytes: int = 0
    inodes_total: int = 0
    inodes_free: int = 0


def mountpoint_of(path: str) -> str:
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def device_of(mountpoint: str) -> str:
    """The source of the last mount at `mountpoint` (mountinfo: `… MOUNTPOINT … - TYPE SOURCE …`, with
    blanks and backslashes octal-escaped)."""
    escaped = "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in mountpoint)
    device = ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, tail = line.partition(" - ")
            if fields.split()[4] == escaped:
                device = tail.split()[1]
    return device


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
    mountpoint = mountpoint_of(path)
    fs = os.statvfs(path)
    return FsUsage(timestamp=time.time_ns(), mountpoint=mountpoint, used_bytes=used, inodes_used=len(seen),
                   device=device_of(mountpoint), capacity_bytes=fs.f_blocks * fs.f_frsize,
                   inodes_total=fs.f_files, inodes_free=fs.f_ffree)
