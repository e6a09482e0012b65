"""Paths inside an image rootfs, resolved as if the rootfs were `/`.

An image is hostile input: `/etc -> /host/dir` or `../../..` inside it must never make crishim read or
hand out a host path. The kernel does the walk (openat2 with RESOLVE_IN_ROOT, Linux 5.6+): symlinks,
absolute or relative, and `..` are followed but clamped at the root, the way Go's securejoin does it for
containerd, without a race between checking a path and using it.
"""

from __future__ import annotations

import ctypes
import errno
import os

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPENAT2 = 437  # the same number on every architecture (the generic syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_in_root(root: str, path: str, flags: int = os.O_RDONLY) -> int:
    """An fd for `path` inside `root` (raises OSError as open(2) would); the caller closes it."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
        relative = path.lstrip("/") or "."
        fd = int(_libc.syscall(_SYS_OPENAT2, root_fd, relative.encode(), ctypes.byref(how),
                               ctypes.sizeof(how)))
        if fd < 0:
            err = ctypes.get_errno() or errno.EIO
            raise OSError(err, os.strerror(err), path)
        return fd
    finally:
        os.close(root_fd)


def read_in_root(root: str, path: str, limit: int = 1 << 20) -> bytes | None:
    """The first `limit` bytes of a regular file inside `root`, None where it is missing or no file."""
    try:
        fd = open_in_root(root, path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not os.path.isfile(f"/proc/self/fd/{fd}"):
            return None
        chunks, size = [], 0
        while size < limit:
            chunk = os.read(fd, min(1 << 16, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def resolve_in_root(root: str, path: str) -> str:
    """The host path that `path` inside `root` names now (it must exist). Raises OSError."""
    fd = open_in_root(root, path, os.O_PATH)
    try:
        resolved = os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    real_root = os.path.realpath(root)
    if resolved != real_root and not resolved.startswith(real_root.rstrip("/") + "/"):
        raise OSError(errno.EXDEV, f"{path!r} leaves the root {root}")
    return resolved
