"""A container's root filesystem: its image's layers under an overlay with a private writable dir.

The overlay is built with the new mount API (fsopen/fsconfig/fsmount/move_mount, through raw syscalls):
each lower layer is its own `lowerdir+` parameter (Linux 6.8+), so a stack is limited only by overlayfs
itself (500 layers), not by mount(2)'s one page of options, which ~40 store paths fill. Kernels without
`lowerdir+` get mount(2) with the joined option string, enough for short stacks.

The layer names overlayfs is given are also what every reader of /proc/*/mountinfo gets, in one line:
runc (and the kubelet) read it with Go's bufio.Scanner, whose 64 KiB line limit 500 full store paths
under a long state dir exceed ("bufio.Scanner: token too long"). So each layer is named relative to an
fd of its directory, `/proc/self/fd/N/<diff_id hex>`, as short whatever the state dir: the effect of the
relative paths containerd and CRI-O give after a chdir, without chdir (a process-wide change no worker
thread may make).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from crishim.errors import FailedPrecondition

_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2
# The kernel takes one page of mount(2) options; longer lowerdir lists need the new mount API.
MAX_MOUNT_OPTIONS = 4096
# Syscall numbers of the new mount API: the same on every architecture (the generic table).
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_FSOPEN_CLOEXEC = 0x1
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_FSMOUNT_CLOEXEC = 0x1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_FDCWD = -100


def _errno(result: int) -> int:
    """0 when a libc call succeeded, else its errno."""
    return 0 if result == 0 else (ctypes.get_errno() or errno.EIO)


def _syscall(number: int, *args: object) -> int:
    result = int(_libc.syscall(number, *args))
    if result < 0:
        err = ctypes.get_errno() or errno.EIO
        raise OSError(err, os.strerror(err))
    return result


def _kernel_log(fs_fd: int) -> str:
    """What the filesystem said about a failed configuration (read from the fs context, one message a
    read, ENODATA when there is no more)."""
    lines = []
    while True:
        try:
            lines.append(os.read(fs_fd, 4096).decode(errors="replace").strip())
        except OSError:
            return "; ".join(lines)


@contextlib.contextmanager
def _short_names(dirs: Sequence[Path]) -> Iterator[list[str]]:
    """`/proc/self/fd/N/<name>` for each of `dirs`, N an fd of its parent, open while the mount is made."""
    fds: dict[Path, int] = {}
    try:
        for parent in dict.fromkeys(d.parent for d in dirs):
            fds[parent] = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        yield [f"/proc/self/fd/{fds[d.parent]}/{d.name}" for d in dirs]
    finally:
        for fd in fds.values():
            os.close(fd)


class _NoLowerdirPlus(Exception):
    """This kernel's overlayfs does not take `lowerdir+` (older than 6.8)."""


@dataclass
class Rootfs:
    lower_dirs: list[Path]  # top layer first, as overlayfs wants them
    upper_dir: Path | None  # None: read-only (an image volume); the kernel then wants 2+ lower dirs
    work_dir: Path | None
    merged: Path

    def options(self, lower_names: Sequence[str] | None = None) -> str:
        lower = ":".join(lower_names or [str(p) for p in self.lower_dirs])
        if self.upper_dir is None:
            return f"lowerdir={lower}"
        return f"lowerdir={lower},upperdir={self.upper_dir},workdir={self.work_dir}"

    def _mount(self) -> None:
        if os.path.ismount(self.merged):
            return
        with _short_names(self.lower_dirs) as lower:
            try:
                self._mount_fs_context(lower)
            except _NoLowerdirPlus:
                self._mount_options(lower)

    def _mount_fs_context(self, lower: Sequence[str]) -> None:
        """fsopen("overlay"), one fsconfig per parameter, fsmount, then move_mount onto `merged`."""
        try:
            fs_fd = _syscall(_SYS_FSOPEN, b"overlay", _FSOPEN_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                raise _NoLowerdirPlus from exc
            raise FailedPrecondition(f"mounting the overlay rootfs at {self.merged}: fsopen: "
                                     f"{exc.strerror}") from exc
        try:
            writable = [] if self.upper_dir is None else [
                ("upperdir", str(self.upper_dir)), ("workdir", str(self.work_dir))]
            params = [*(("lowerdir+", name) for name in lower), *writable, ("source", "overlay")]
            for index, (key, value) in enumerate(params):
                try:
                    _syscall(_SYS_FSCONFIG, fs_fd, _FSCONFIG_SET_STRING, key.encode(), value.encode(), 0)
                except OSError as exc:
                    if index == 0 and exc.errno == errno.EINVAL:
                        raise _NoLowerdirPlus from exc
                    shown = self.lower_dirs[index] if index < len(lower) else value
                    raise self._failed(f"{key} {shown}", exc, fs_fd) from exc
            try:
                _syscall(_SYS_FSCONFIG, fs_fd, _FSCONFIG_CMD_CREATE, None, None, 0)
                mnt_fd = _syscall(_SYS_FSMOUNT, fs_fd, _FSMOUNT_CLOEXEC, 0)
            except OSError as exc:
                raise self._failed("creating the overlay", exc, fs_fd) from exc
        finally:
            os.close(fs_fd)
        try:
            _syscall(_SYS_MOVE_MOUNT, mnt_fd, b"", _AT_FDCWD, str(self.merged).encode(),
                     _MOVE_MOUNT_F_EMPTY_PATH)
        except OSError as exc:
            raise FailedPrecondition(f"mounting the overlay rootfs at {self.merged}: move_mount: "
                                     f"{exc.strerror}") from exc
        finally:
            os.close(mnt_fd)

    def _failed(self, what: str, exc: OSError, fs_fd: int) -> FailedPrecondition:
        said = _kernel_log(fs_fd)
        return FailedPrecondition(f"mounting the overlay rootfs at {self.merged} "
                                  f"({len(self.lower_dirs)} layers): {what}: {exc.strerror}"
                                  + (f" (kernel: {said})" if said else ""))

    def _mount_options(self, lower: Sequence[str]) -> None:
        options = self.options(lower)
        if len(options) >= MAX_MOUNT_OPTIONS:
            raise FailedPrecondition(f"overlay options for {self.merged} exceed one page "
                                     f"({len(self.lower_dirs)} layers) and this kernel's overlayfs "
                                     "has no lowerdir+ (Linux 6.8+)")
        err = _errno(_libc.mount(b"overlay", str(self.merged).encode(), b"overlay", 0,
                                 options.encode()))
        if err:
            raise FailedPrecondition(f"mounting the overlay rootfs at {self.merged}: "
                                     f"{os.strerror(err)} (options {options})")

    def _unmount(self) -> None:
        while os.path.ismount(self.merged):
            err = _errno(_libc.umount2(str(self.merged).encode(), _MNT_DETACH))
            if err == errno.EINVAL:
                return
            if err:
                raise FailedPrecondition(f"unmounting {self.merged}: {os.strerror(err)}")

    async def mount(self) -> None:
        """Mount the overlay at `merged`; nothing happens if it is mounted already."""
        await asyncio.to_thread(self._mount)

    async def unmount(self) -> None:
        """Detach the overlay; nothing happens if it is not mounted."""
        await asyncio.to_thread(self._unmount)
