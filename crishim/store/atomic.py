"""Atomic file writes: a crash leaves either the old content or the new one, never a torn or empty file.

Files are made 0600: records hold pod configs and annotations, readable by root only (see `private`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = True, sync_dir: bool = True) -> None:
    """Write a temp file beside `path` (unique, so concurrent writers never share one) and rename it over
    `path`. The rename alone survives a killed process; `durable` adds the fsync that makes the content
    survive a power cut, and `sync_dir` the directory fsync that makes the rename itself survive one."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if durable and sync_dir:
        _fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any, *, durable: bool = True, sync_dirs: bool | None = None) -> None:
    """A JSON record. With `durable`, its directory and the one above are fsynced too when the record
    is new (or when `sync_dirs` says so: the first durable write of a record written before without)."""
    is_new = not path.exists()
    if is_new:
        path.parent.mkdir(parents=True, exist_ok=True)
    dirs = is_new if sync_dirs is None else sync_dirs
    payload = json.dumps(data, separators=(",", ":")).encode()
    write_bytes_atomic(path, payload, durable=durable, sync_dir=dirs)
    if durable and dirs:
        _fsync_dir(path.parent.parent)


def read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def remove_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
