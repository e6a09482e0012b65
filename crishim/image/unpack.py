"""Extract one layer tarball into its own directory, in the form overlayfs stacks.

Our own walk instead of `tarfile.extractall`: the stdlib `data` filter refuses what real images carry
(absolute symlinks, device nodes), and the others are unsafe. A layer is hostile input, so every file
operation is confined to the layer's directory by construction, not by checking paths first: each entry's
parent is reached from an fd of the layer root one validated component at a time (`O_NOFOLLOW |
O_DIRECTORY`, so a symlink or a file on the way fails the open), and the entry itself is created,
replaced or removed relative to that parent fd by a single name that is never empty, `.`, `..` or holds a
`/`. Hard links must point to an earlier entry of the same layer, reached the same way. OCI whiteouts
become overlay whiteouts (`.wh.x` → a 0/0 character device, `.wh..wh..opq` → the
`trusted.overlay.opaque` xattr); owners, modes, times, xattrs and device nodes are kept as the layer says
(the store's directories are root-only, so a setuid file in a layer serves no local user). Each layer is
unpacked alone: overlayfs, not the extraction, merges it with the layers below. Runs in a worker thread
(blocking I/O); the uncompressed stream is hashed on the way to check the config's `diff_id`.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import os
import queue
import shutil
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import zstandard
from isal import igzip, isal_zlib

from crishim.errors import InvalidArgument
from crishim.image.store import WRITEBACK_STEP, start_writeback

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_XATTR_PAX_PREFIX = "SCHILY.xattr."
_CHUNK = 1 << 20
# A large file's pages are handed to the disk while it is still written and once it is, so the `sync`
# before the index names the layer finds them written. Smaller files are left to the flusher threads that
# `sync` wakes: started one by one here, they would cost the unpacking thread more than they save.
_WRITEBACK_MIN = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_INFLATE_ERROR = cast(type[Exception], isal_zlib.error)  # isal is untyped
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# What a layer's own content can make a file operation fail with (a name too long, a file where a
# directory must be, too many links); anything else (ENOSPC, EIO) is the host's problem, not the layer's.
_CONTENT_ERRNOS = {errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                   errno.ENOTEMPTY, errno.EMLINK, errno.EXDEV, errno.EINVAL}


class LayerError(InvalidArgument):
    """A layer that is malformed or tries to write outside its directory."""


@dataclass(frozen=True)
class DiskUsage:
    bytes: int
    inodes: int


def _open_uncompressed(raw: io.BufferedReader) -> IO[bytes]:
    """The tar stream inside `raw`, by its magic (peeked, so `raw` need not seek): gzip, zstd (all
    frames, as zstd:chunked has many) or plain tar."""
    magic = raw.peek(4)[:4]
    if magic.startswith(_GZIP_MAGIC):
        return igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[no-untyped-call,return-value]
    if magic == _ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
    return raw


class _TarStream:
    """The uncompressed layer: hashed as it is read, read by tarfile's header parser through `read` and
    `tell`, and copied into files straight from the same buffer."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.hash = hashlib.sha256()
        self._buf = b""
        self._pos = 0
        self._start = 0  # stream offset of _buf[0]

    def _fill(self) -> bool:
        """The next chunk into the buffer; False at the end of the stream."""
        self._start += len(self._buf)
        self._buf = self.source.read(_CHUNK)
        self._pos = 0
        self.hash.update(self._buf)
        return bool(self._buf)

    def tell(self) -> int:
        return self._start + self._pos

    def read(self, size: int) -> bytes:
        """Up to `size` bytes, fewer only at the end."""
        end = self._pos + size
        if end <= len(self._buf):
            data = self._buf[self._pos:end]
            self._pos = end
            return data
        parts = [self._buf[self._pos:]]
        self._pos = len(self._buf)
        need = size - len(parts[0])
        while need > 0 and self._fill():
            parts.append(self._buf[:need])
            self._pos = len(parts[-1])
            need -= self._pos
        return b"".join(parts)

    def copy(self, fd: int | None, size: int) -> None:
        """The next `size` bytes written to `fd` (or dropped, when None); they must all be there."""
        unflushed = 0
        while size:
            if self._pos == len(self._buf) and not self._fill():
                raise EOFError("unexpected end of data")
            end = min(len(self._buf), self._pos + size)
            if fd is not None:
                view = memoryview(self._buf)[self._pos:end]
                while view:
                    view = view[os.write(fd, view):]
                unflushed += end - self._pos
                if unflushed >= WRITEBACK_STEP:
                    start_writeback(fd)
                    unflushed = 0
            size -= end - self._pos
            self._pos = end

    def skip_to(self, offset: int) -> None:
        if offset > self.tell():
            self.copy(None, offset - self.tell())

    def drain(self) -> str:
        """Read to the end (trailing blocks count for the diff_id too); the digest of all of it."""
        self._pos = len(self._buf)
        while self._fill():
            pass
        return f"sha256:{self.hash.hexdigest()}"


class _Members:
    """The members of the tar in `stream`, each parsed by `tarfile.TarInfo.fromtarfile`, which reads the
    attributes of a TarFile given here; where the archive ends and what is an error are TarFile.next's."""

    encoding = tarfile.ENCODING
    errors = "surrogateescape"

    def __init__(self, stream: _TarStream) -> None:
        self.fileobj = stream
        self.offset = 0  # where the next header starts: fromtarfile moves it past the member's data
        self.pax_headers: dict[str, str] = {}  # PAX global headers, which fromtarfile keeps here

    def next(self) -> tarfile.TarInfo | None:
        self.fileobj.skip_to(self.offset)
        try:
            return tarfile.TarInfo.fromtarfile(self)  # type: ignore[arg-type]
        except tarfile.HeaderError as exc:  # what each kind means is TarFile.next's
            kind = type(exc).__name__
            if kind == "SubsequentHeaderError" or (self.offset == 0 and kind != "EOFHeaderError"):
                raise tarfile.ReadError("empty file" if kind == "EmptyHeaderError" else str(exc)) from None
        return None  # the end marker, or a bad header after the first (tarfile stops there too)


def components(name: str, entry: str = "") -> list[str]:
    """The path's components below the layer root; refuses a NUL and any `..`."""
    if "\x00" in name:
        raise LayerError(f"entry {entry or name!r} has a NUL byte in {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"entry {entry or name!r} has a '..' component in {name!r}: "
                         "refusing to unpack the layer")
    return parts


def clean_name(name: str) -> str:
    """The entry's path relative to the layer root; refuses anything that climbs out of it."""
    return "/".join(components(name))


class _Extractor:
    """Entries applied below `root` (an fd of the layer directory) through directory fds only."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.dir_times: list[tuple[tuple[str, ...], tarfile.TarInfo]] = []
        # The parent of the last entry stays open: tar streams list a directory's files together.
        self._cached: tuple[tuple[str, ...], int] | None = None

    def _open_dir(self, parts: Sequence[str], entry: str, create: bool) -> int:
        """A new fd for the directory `parts`, walked from the root without following symlinks."""
        fd = os.dup(self.root)
        try:
            for part in parts:
                try:
                    step = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    step = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    raise LayerError(f"entry {entry!r} goes through {part!r}, which is not a "
                                     "directory") from None
                os.close(fd)
                fd = step
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _parent(self, parts: Sequence[str], entry: str) -> int:
        """The (cached, borrowed) fd of the entry's parent directory, created where missing."""
        key = tuple(parts[:-1])
        if self._cached is None or self._cached[0] != key:
            self.close()
            self._cached = (key, self._open_dir(key, entry, create=True))
        return self._cached[1]

    def close(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    @staticmethod
    def _clear(fd: int, name: str, keep_dir: bool = False) -> None:
        """Remove `name` from the directory `fd` (a directory with all it holds, never through a link).
        `fd` is always the cached parent, so the cache never holds a directory removed here."""
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=fd)
        elif not keep_dir:
            shutil.rmtree(name, dir_fd=fd)

    def _attrs(self, fd: int, name: str, member: tarfile.TarInfo) -> None:
        """Owner, xattrs, mode and time of `name` in the directory `fd`: through an fd of the entry itself
        (a symlink's through `fd`, never followed)."""
        if member.issym():
            os.chown(name, member.uid, member.gid, dir_fd=fd, follow_symlinks=False)
            self._xattrs(f"/proc/self/fd/{fd}/{name}", member, follow=False)
            os.utime(name, (member.mtime, member.mtime), dir_fd=fd, follow_symlinks=False)
            return
        # A directory is opened; a device node or fifo must not be, so an O_PATH fd pins its inode and
        # its /proc link reaches exactly that inode.
        own = os.open(name, _DIR_FLAGS if member.isdir() else os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                      dir_fd=fd)
        try:
            self._set_attrs(own if member.isdir() else f"/proc/self/fd/{own}", member)
        finally:
            os.close(own)

    def _set_attrs(self, target: int | str, member: tarfile.TarInfo) -> None:
        """`target` an fd opened for real, or a /proc/self/fd path: either reaches one inode."""
        os.chown(target, member.uid, member.gid)  # first: chown clears setuid bits and capabilities
        self._xattrs(target, member, follow=True)
        os.chmod(target, member.mode & 0o7777)
        if not member.isdir():  # a directory's time is set last, in finish()
            os.utime(target, (member.mtime, member.mtime))

    @staticmethod
    def _xattrs(path: int | str, member: tarfile.TarInfo, follow: bool) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith(_XATTR_PAX_PREFIX):
                continue
            name = key[len(_XATTR_PAX_PREFIX):]
            if name.startswith("trusted.overlay."):
                continue  # only our whiteout handling may mark overlay metadata
            try:
                os.setxattr(path, name, value.encode("utf-8", "surrogateescape"),
                            follow_symlinks=follow)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise

    def whiteout(self, parts: list[str], entry: str) -> None:
        fd = self._parent(parts, entry)
        base = parts[-1]
        if base == OPAQUE_MARKER:
            os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs bookkeeping entries (.wh..wh.plnk and friends) mean nothing to overlay
        target = base[len(WHITEOUT_PREFIX):]
        if target in ("", ".", ".."):
            raise LayerError(f"entry {entry!r} is a whiteout of {target!r}, which names no file")
        self._clear(fd, target)
        os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=fd)

    def entry(self, stream: _TarStream, member: tarfile.TarInfo) -> None:
        try:
            self._entry(stream, member)
        except OSError as exc:
            if exc.errno not in _CONTENT_ERRNOS:
                raise
            raise LayerError(f"entry {member.name!r} cannot be unpacked: "
                             f"{os.strerror(exc.errno)}") from exc

    def _entry(self, stream: _TarStream, member: tarfile.TarInfo) -> None:
        parts = components(member.name)
        if not parts:
            if member.isdir():
                self.dir_times.append(((), member))
                self._set_attrs(self.root, member)
            return
        if any(p.startswith(WHITEOUT_PREFIX) for p in parts[:-1]):
            raise LayerError(f"entry {member.name!r} lies below a whiteout name")
        if parts[-1].startswith(WHITEOUT_PREFIX):
            self.whiteout(parts, member.name)
            return
        fd = self._parent(parts, member.name)
        name = parts[-1]
        if member.isdir():
            self._clear(fd, name, keep_dir=True)
            with contextlib.suppress(FileExistsError):  # listed twice, or made for an entry inside it
                os.mkdir(name, 0o700, dir_fd=fd)
            self.dir_times.append((tuple(parts), member))
        elif member.isreg():
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                out_fd = os.open(name, flags, 0o600, dir_fd=fd)
            except FileExistsError:  # an earlier entry's: replaced (rare, so not checked first)
                self._clear(fd, name)
                out_fd = os.open(name, flags, 0o600, dir_fd=fd)
            try:
                self._write(out_fd, stream, member)
                if member.size >= _WRITEBACK_MIN:
                    start_writeback(out_fd)
                self._set_attrs(out_fd, member)
            finally:
                os.close(out_fd)
            return
        elif member.islnk():
            self._hard_link(fd, name, member)
            return  # a hard link shares the target's inode and so its attributes
        elif member.issym():
            if not member.linkname or "\x00" in member.linkname:
                raise LayerError(f"entry {member.name!r} is a symlink to {member.linkname!r}, which "
                                 "symlink(2) cannot make")
            self._clear(fd, name)
            os.symlink(member.linkname, name, dir_fd=fd)
        elif member.ischr() or member.isblk() or member.isfifo():
            self._clear(fd, name)
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
            os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=fd)
        else:
            raise LayerError(f"entry {member.name!r} has an unsupported type {member.type!r}")
        self._attrs(fd, name, member)

    @staticmethod
    def _write(fd: int, stream: _TarStream, member: tarfile.TarInfo) -> None:
        """The file's data; a sparse file's chunks at their offsets, its holes left holes."""
        if member.sparse is None:
            stream.copy(fd, member.size)
            return
        for offset, size in cast(list[tuple[int, int]], member.sparse):  # typeshed says int
            if offset < 0 or size < 0 or offset + size > member.size:
                raise LayerError(f"entry {member.name!r} has a sparse chunk of {size} bytes at {offset}, "
                                 f"outside its {member.size} bytes")
            os.lseek(fd, offset, os.SEEK_SET)
            stream.copy(fd, size)
        os.ftruncate(fd, member.size)

    def _hard_link(self, fd: int, name: str, member: tarfile.TarInfo) -> None:
        target = components(member.linkname, member.name)
        if not target:
            raise LayerError(f"entry {member.name!r} is a hard link to the layer root")
        missing = LayerError(f"entry {member.name!r} is a hard link to {member.linkname!r}, which is not "
                             "earlier in the same layer")
        try:
            target_fd = self._open_dir(target[:-1], member.name, create=False)
        except FileNotFoundError:
            raise missing from None
        try:
            try:
                st = os.stat(target[-1], dir_fd=target_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise missing from None
            if stat.S_ISDIR(st.st_mode):
                raise LayerError(f"entry {member.name!r} is a hard link to a directory")
            if target[-1] == name and os.path.samestat(os.fstat(target_fd), os.fstat(fd)):
                return  # a link to itself changes nothing
            self._clear(fd, name)
            os.link(target[-1], name, src_dir_fd=target_fd, dst_dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(target_fd)

    def finish(self) -> None:
        """Directory times last: writing into a directory moves its mtime."""
        self.close()
        for parts, member in reversed(self.dir_times):
            times = (member.mtime, member.mtime)
            if not parts:
                os.utime(self.root, times)
                continue
            try:
                fd = self._open_dir(parts[:-1], "", create=False)
            except (FileNotFoundError, LayerError):
                continue  # removed or replaced by a later entry
            try:
                if stat.S_ISDIR(os.stat(parts[-1], dir_fd=fd, follow_symlinks=False).st_mode):
                    os.utime(parts[-1], times, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)


@dataclass(frozen=True)
class Unpacked:
    """A layer unpacked: the digest of its uncompressed stream (what an image config calls its diff_id)
    and the disk it takes."""

    diff_id: str
    usage: DiskUsage

    def check(self, diff_id: str, layer: str) -> None:
        """Refuse the layer (`layer` names it) unless it is the one the image config lists."""
        if self.diff_id != diff_id:
            raise LayerError(f"layer {layer}: uncompressed content is {self.diff_id}, but the image config "
                             f"says {diff_id}")


def unpack_layer(blob: Path, dest: Path, diff_id: str) -> DiskUsage:
    """Unpack `blob` (a store blob, named by its sha256 hex) into the new directory `dest`; checks the
    uncompressed digest against `diff_id`. Errors name the layer and the entry."""
    layer = f"sha256:{blob.name}"
    with open(blob, "rb") as raw:
        unpacked = unpack_stream(raw, dest, layer)
    unpacked.check(diff_id, layer)
    return unpacked.usage


def unpack_stream(raw: io.BufferedReader, dest: Path, layer: str) -> Unpacked:
    """Unpack the layer blob `raw` reads (compressed or not, read once from start to end) into the new
    directory `dest`, hashing the uncompressed stream on the way. `layer` names it in errors."""
    dest.mkdir(mode=0o755)  # a read-only stack's root is its top layer's: `layers/` keeps others out
    root = os.open(dest, _DIR_FLAGS)
    try:
        stream = _TarStream(_open_uncompressed(raw))
        members = _Members(stream)
        extractor = _Extractor(root)
        try:
            while (member := members.next()) is not None:
                extractor.entry(stream, member)
                if stream.tell() > members.offset:
                    raise LayerError(f"entry {member.name!r} has more data than its header declares")
            extractor.finish()
            actual = stream.drain()
        except LayerError as exc:
            raise LayerError(f"layer {layer}: {exc}") from exc
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, _INFLATE_ERROR, zstandard.ZstdError) as exc:
            raise LayerError(f"layer {layer} is not a valid tar archive: {exc}") from exc
        finally:
            extractor.close()
    finally:
        os.close(root)
    return Unpacked(actual, disk_usage(dest))


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


class Feed(io.RawIOBase):
    """Bytes handed from the event loop (`put`, `end`) to the thread that unpacks them (`unpack_fed`).
    Bounded, so a slow disk slows the download instead of filling memory; the reader consumes to the
    end even when unpacking failed, so `put` never waits on a reader that gave up."""

    def __init__(self, depth: int = 8) -> None:
        super().__init__()
        self._chunks: queue.Queue[bytes | None] = queue.Queue(depth)
        self._current = memoryview(b"")
        self._ended = False  # the reader saw the end
        self._closed_writer = False

    def put(self, chunk: bytes) -> None:
        """Blocking: run in a worker thread."""
        self._chunks.put(chunk)

    def end(self) -> None:
        """No more bytes (also after a failed download: the reader then sees a truncated layer)."""
        if not self._closed_writer:
            self._closed_writer = True
            self._chunks.put(None)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._current:
            if self._ended:
                return 0
            chunk = self._chunks.get()
            if chunk is None:
                self._ended = True
                return 0
            self._current = memoryview(chunk)
        size = min(len(buffer), len(self._current))
        buffer[:size] = self._current[:size]
        self._current = self._current[size:]
        return size

    def discard_rest(self) -> None:
        while not self._ended:
            self._ended = self._chunks.get() is None


def unpack_fed(feed: Feed, dest: Path, layer: str) -> Unpacked:
    """`unpack_stream` of what `feed` is given, as it arrives."""
    try:
        return unpack_stream(io.BufferedReader(feed, _CHUNK), dest, layer)
    finally:
        feed.discard_rest()
