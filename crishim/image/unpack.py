"""Extract one layer tarball into its own directory, in the form overlayfs stacks.

Our own walk instead of `tarfile.extractall`: the stdlib `data` filter refuses what real images carry
(absolute symlinks, device nodes), and the others are unsafe. Rules: no entry may land outside the
directory (`..` components and paths through symlinks are refused, hard links must point inside the same
layer), OCI whiteouts become overlay whiteouts (`.wh.x` → a 0/0 character device, `.wh..wh..opq` → the
`trusted.overlay.opaque` xattr), owners, modes, times, xattrs and device nodes are kept as the layer says.
Each layer is unpacked alone: overlayfs, not the extraction, merges it with the layers below.
Runs in a worker thread (blocking I/O); the uncompressed stream is hashed on the way to check the
config's `diff_id`.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from crishim.errors import InvalidArgument

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_XATTR_PAX_PREFIX = "SCHILY.xattr."
_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class LayerError(InvalidArgument):
    """A layer that is malformed or tries to write outside its directory."""


@dataclass(frozen=True)
class DiskUsage:
    bytes: int
    inodes: int


class _HashingReader:
    """A read-only stream that hashes everything read through it."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.hash.update(data)
        return data

    def drain(self) -> str:
        while self.read(_CHUNK):
            pass
        return f"sha256:{self.hash.hexdigest()}"


def _open_uncompressed(raw: IO[bytes]) -> IO[bytes]:
    magic = raw.read(4)
    raw.seek(0)
    if magic.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if magic == _ZSTD_MAGIC:
        raise LayerError("zstd-compressed layers are not supported; push the image with gzip layers")
    return raw


def clean_name(name: str) -> str:
    """The entry's path relative to the layer root; refuses anything that climbs out of it."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"layer entry {name!r} has a '..' component: refusing to unpack the layer")
    return "/".join(parts)


class _Extractor:
    def __init__(self, dest: Path) -> None:
        self.dest = str(dest)
        self.dir_times: list[tuple[str, tarfile.TarInfo]] = []

    def _path(self, rel: str) -> str:
        return f"{self.dest}/{rel}" if rel else self.dest

    def _parent(self, rel: str, entry: str, create: bool = True) -> None:
        """Make sure the parents of `rel` are real directories, never passing through a symlink."""
        current = self.dest
        for part in rel.split("/")[:-1]:
            current = f"{current}/{part}"
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(current, 0o755)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise LayerError(f"layer entry {entry!r} goes through {part!r}, which is not a directory")

    def _clear(self, path: str, keep_dir: bool = False) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def _attrs(self, path: str, member: tarfile.TarInfo) -> None:
        os.lchown(path, member.uid, member.gid)
        for key, value in member.pax_headers.items():
            if not key.startswith(_XATTR_PAX_PREFIX):
                continue
            name = key[len(_XATTR_PAX_PREFIX):]
            if name.startswith("trusted.overlay."):
                continue  # only our whiteout handling may mark overlay metadata
            try:
                os.setxattr(path, name, value.encode("utf-8", "surrogateescape"),
                            follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
        if not member.issym():
            os.chmod(path, member.mode & 0o7777)
            if not member.isdir():
                os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
        else:
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)

    def whiteout(self, rel: str, name: str) -> None:
        base = rel.rsplit("/", 1)[-1]
        parent = rel[: -len(base)].rstrip("/")
        self._parent(rel, name)
        if base == OPAQUE_MARKER:
            os.setxattr(self._path(parent), OVERLAY_OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs bookkeeping entries (.wh..wh.plnk and friends) mean nothing to overlay
        target = f"{parent}/{base[len(WHITEOUT_PREFIX):]}" if parent else base[len(WHITEOUT_PREFIX):]
        path = self._path(target)
        self._clear(path)
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))

    def entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        rel = clean_name(member.name)
        if rel.rsplit("/", 1)[-1].startswith(WHITEOUT_PREFIX):
            self.whiteout(rel, member.name)
            return
        if not rel:
            if member.isdir():
                self.dir_times.append((self.dest, member))
                self._attrs(self.dest, member)
            return
        self._parent(rel, member.name)
        path = self._path(rel)
        if member.isdir():
            self._clear(path, keep_dir=True)
            if not os.path.isdir(path):
                os.mkdir(path, 0o700)
            self.dir_times.append((path, member))
        elif member.isreg():
            self._clear(path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                source = tar.extractfile(member)
                if source is not None:
                    shutil.copyfileobj(source, out, _CHUNK)
        elif member.islnk():
            target = clean_name(member.linkname)
            target_path = self._path(target)
            try:
                self._parent(target, member.linkname, create=False)
                st = os.lstat(target_path)
            except FileNotFoundError as exc:
                raise LayerError(f"hard link {member.name!r} points to {member.linkname!r}, which is "
                                 "not earlier in the same layer") from exc
            if not target or stat.S_ISDIR(st.st_mode):
                raise LayerError(f"hard link {member.name!r} points to a directory")
            self._clear(path)
            os.link(target_path, path, follow_symlinks=False)
            return  # a hard link shares the target's inode and so its attributes
        elif member.issym():
            self._clear(path)
            os.symlink(member.linkname, path)
        elif member.ischr() or member.isblk() or member.isfifo():
            self._clear(path)
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
        else:
            raise LayerError(f"layer entry {member.name!r} has an unsupported type {member.type!r}")
        self._attrs(path, member)

    def finish(self) -> None:
        """Directory times last: writing into a directory moves its mtime."""
        for path, member in reversed(self.dir_times):
            os.utime(path, (member.mtime, member.mtime))


def unpack_layer(blob: Path, dest: Path, diff_id: str) -> DiskUsage:
    """Unpack `blob` into the new directory `dest`; checks the uncompressed digest against `diff_id`."""
    dest.mkdir(mode=0o755)
    with open(blob, "rb") as raw:
        reader = _HashingReader(_open_uncompressed(raw))
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                extractor = _Extractor(dest)
                for member in tar:
                    extractor.entry(tar, member)
                extractor.finish()
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise LayerError(f"layer {blob.name} is not a valid tar archive: {exc}") from exc
        actual = reader.drain()
    if actual != diff_id:
        raise LayerError(f"layer {blob.name}: uncompressed content is {actual}, but the image config "
                         f"says {diff_id}")
    return disk_usage(dest)


def disk_usage(root: Path) -> DiskUsage:
    seen: set[int] = set()
    used = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            used += st.st_blocks * 512
    top = os.lstat(root)
    return DiskUsage(bytes=used + top.st_blocks * 512, inodes=len(seen) + 1)
