"""The on-disk store: content-addressed blobs, unpacked layers and one index file.

Layout under `root`:
    blobs/sha256/<hex>   verified content (manifests, configs, compressed layers)
    ingest/              downloads in progress; emptied at start
    layers/<hex>/        a layer unpacked, named after its diff_id; `layers/.tmp-*` are in progress
    rootfs/<id>.json     which layers a container's rootfs stacks (keeps them from being collected)
    images.json          the index: images, their names and what they reference
Crash safety comes from ordering: content is written under a temporary name and renamed into place once
verified, and an image exists only when `images.json` (replaced atomically) names it. Anything present
but unnamed after a crash is garbage, collected at start. Content is not fsynced file by file: a killed
process loses nothing the kernel was given, and against a power cut one `sync` of the whole filesystem
comes before every index write that names new content, so the index never names what is not on disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, BinaryIO

from crishim.errors import InvalidArgument
from crishim.store import private_dir, write_bytes_atomic

INDEX_VERSION = 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SYNC_FILE_RANGE_WRITE = 2


def _hex(digest: str) -> str:
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64:
        raise InvalidArgument(f"unsupported digest {digest!r} (only sha256 is supported)")
    return value


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


class Store:
    """Paths and blocking file operations; callers run these in worker threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.ingest = root / "ingest"
        self.layers = root / "layers"
        self.rootfs = root / "rootfs"
        self.index_path = root / "images.json"
        self.empty_layer = self.layers / "empty"

    def setup(self) -> None:
        # Root-only: layers keep their setuid binaries and device nodes (see crishim.store.private).
        private_dir(self.root)
        private_dir(self.layers)
        for path in (self.blobs, self.ingest, self.rootfs, self.empty_layer):
            path.mkdir(parents=True, exist_ok=True)
        for leftover in self.ingest.iterdir():
            leftover.unlink()
        for leftover in self.layers.glob(".tmp-*"):
            shutil.rmtree(leftover)
        for directory in (self.root, self.blobs, self.rootfs):
            for leftover in directory.glob(".*.tmp"):  # atomic writes a crash interrupted
                leftover.unlink()

    def blob_path(self, digest: str) -> Path:
        return self.blobs / _hex(digest)

    def layer_path(self, diff_id: str) -> Path:
        return self.layers / _hex(diff_id)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def put_blob(self, digest: str, data: bytes) -> None:
        actual = sha256_digest(data)
        if actual != digest:
            raise InvalidArgument(f"content has digest {actual}, expected {digest}")
        if not self.has_blob(digest):
            write_bytes_atomic(self.blob_path(digest), data, durable=False)  # see `sync`

    def put_file(self, src: Path, expected: str = "", own: bool = False) -> tuple[str, int]:
        """Copy `src` into the store, hashing it on the way; returns its digest and size.

        `own`: `src` is the store's own scratch (an unpacked archive, on this filesystem, written by no
        one else), so it is verified in place and hard-linked instead of copied.
        """
        if own:
            digest, size = _hash(src, None)
            _check_digest(src, digest, expected)
            if not self.has_blob(digest):
                with contextlib.suppress(FileExistsError):  # a concurrent import stored it first
                    os.link(src, self.blob_path(digest))
            return digest, size
        tmp = self.ingest / f"file-{secrets.token_hex(8)}"
        try:
            with open(tmp, "wb") as out:
                digest, size = _hash(src, out)
            _check_digest(src, digest, expected)
            if not self.has_blob(digest):
                os.replace(tmp, self.blob_path(digest))
            return digest, size
        finally:
            tmp.unlink(missing_ok=True)

    def ingest_path(self, digest: str) -> Path:
        return self.ingest / f"{_hex(digest)}.{secrets.token_hex(4)}"

    def commit_ingest(self, tmp: Path, digest: str) -> None:
        os.replace(tmp, self.blob_path(digest))

    def layer_tmp(self, diff_id: str) -> Path:
        return self.layers / f".tmp-{_hex(diff_id)}-{secrets.token_hex(4)}"

    def commit_layer(self, tmp: Path, diff_id: str) -> bool:
        """Name the unpacked `tmp` after its diff_id (durable with the next `sync`); False when a layer of
        that diff_id is there already (the same content: `tmp` is then the caller's to delete)."""
        try:
            os.rename(tmp, self.layer_path(diff_id))
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            return False
        return True

    def sync(self) -> None:
        """Everything written to the store's filesystem so far on disk (syncfs): the blobs and layers an
        index write is about to name, at once, instead of a flush per file."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)

    def load_index(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.index_path.read_bytes())
        except FileNotFoundError:
            return {"version": INDEX_VERSION, "images": [], "layers": {}}
        if data.get("version") != INDEX_VERSION:
            raise InvalidArgument(f"{self.index_path}: unknown index version {data.get('version')}")
        return data

    def save_index(self, data: dict[str, Any], names_new_content: bool = False) -> None:
        """Replace the index durably; when it may name content not named before, `sync` first."""
        if names_new_content:
            self.sync()
        write_bytes_atomic(self.index_path, json.dumps(data, indent=1, sort_keys=True).encode())

    def collect(self, blobs: set[str], layers: set[str]) -> None:
        """Delete every blob and layer not in the sets (given as hex digests)."""
        for path in self.blobs.iterdir():
            if path.name not in blobs:
                path.unlink(missing_ok=True)
        for path in self.layers.iterdir():
            if path.name not in layers and path != self.empty_layer \
                    and not path.name.startswith(".tmp-"):
                trash = self.layers / f".tmp-gc-{secrets.token_hex(4)}"
                os.rename(path, trash)
                shutil.rmtree(trash)


WRITEBACK_STEP = 8 << 20  # bytes written to a large file between two `start_writeback`s


def start_writeback(fd: int) -> None:
    """Have the disk start on the file's dirty pages now, without waiting (sync_file_range WRITE): the
    `sync` before the index names the file then finds it mostly written, instead of the whole pull's
    data still in memory (the kernel's own writeback waits for gigabytes of it, or for 30 s)."""
    _libc.sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # advisory: `sync` catches what it missed


def _hash(src: Path, copy: BinaryIO | None) -> tuple[str, int]:
    """The digest and size of `src`, copied into `copy` if given (durable with the next `sync`)."""
    hasher = hashlib.sha256()
    size = 0
    with open(src, "rb") as source:
        while chunk := source.read(1 << 20):
            hasher.update(chunk)
            size += len(chunk)
            if copy is not None:
                copy.write(chunk)
    return f"sha256:{hasher.hexdigest()}", size


def _check_digest(src: Path, digest: str, expected: str) -> None:
    if expected and digest != expected:
        raise InvalidArgument(f"{src.name} has digest {digest}, but the archive says {expected}")
