"""inotify through libc: the standard library has no binding, and both CNI config reloads and the
container log copier wait on file changes rather than poll."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from typing import NamedTuple

IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_IGNORED = 0x8000

_EVENT_HEADER = 16  # int wd; uint32 mask, cookie, len

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


class Event(NamedTuple):
    wd: int
    mask: int
    name: str  # "" for events about the watched path itself


def init() -> int:
    """A non-blocking inotify fd; OSError when the kernel has none to give."""
    fd = int(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_init1: {os.strerror(err)}")
    return fd


def add_watch(fd: int, path: str, mask: int) -> int:
    wd = int(_libc.inotify_add_watch(fd, os.fsencode(path), mask))
    if wd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
    return wd


def rm_watch(fd: int, wd: int) -> None:
    """Errors ignored: the watch is gone already when its directory was removed."""
    _libc.inotify_rm_watch(fd, wd)


def read_events(fd: int) -> Iterator[Event]:
    """The events queued on `fd` now (none if there are none)."""
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        offset = 0
        while offset + _EVENT_HEADER <= len(data):
            wd, mask, _cookie, length = (int.from_bytes(data[offset + i:offset + i + 4], "little")
                                         for i in (0, 4, 8, 12))
            raw = data[offset + _EVENT_HEADER:offset + _EVENT_HEADER + length]
            yield Event(wd, mask, os.fsdecode(raw.rstrip(b"\0")))
            offset += _EVENT_HEADER + length
