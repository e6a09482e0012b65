"""A container's root filesystem: its image's layers under an overlay with a private writable dir."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from crishim.errors import FailedPrecondition

_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2
# The kernel takes one page of mount options; longer lowerdir lists must be shortened first.
MAX_MOUNT_OPTIONS = 4096


def _errno(result: int) -> int:
    """0 when a libc call succeeded, else its errno."""
    return 0 if result == 0 else (ctypes.get_errno() or errno.EIO)


@dataclass
class Rootfs:
    lower_dirs: list[Path]  # top layer first, as overlayfs wants them
    upper_dir: Path | None  # None: read-only (an image volume); the kernel then wants 2+ lower dirs
    work_dir: Path | None
    merged: Path

    def options(self) -> str:
        lower = ":".join(str(p) for p in self.lower_dirs)
        if self.upper_dir is None:
            return f"lowerdir={lower}"
        return f"lowerdir={lower},upperdir={self.upper_dir},workdir={self.work_dir}"

    def _mount(self) -> None:
        if os.path.ismount(self.merged):
            return
        options = self.options()
        if len(options) >= MAX_MOUNT_OPTIONS:
            raise FailedPrecondition(f"overlay options for {self.merged} exceed one page "
                                     f"({len(self.lower_dirs)} layers)")
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
