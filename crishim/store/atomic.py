"""Atomic file writes: a crash leaves either the old content or the new one, never a torn or empty file."""

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


def write_bytes_atomic(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Write a temp file beside `path` (unique, so concurrent writers never share one), fsync it and
    rename it over `path`; with `sync_dir`, fsync the directory so the rename itself is durable."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if sync_dir:
        _fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    """A JSON record; directories are fsynced only when the record is new.

    Replacing an existing record without a directory fsync can at worst leave the previous (complete)
    record after a power cut, which recovery handles anyway; a new record must survive one.
    """
    is_new = not path.exists()
    if is_new:
        path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, json.dumps(data, separators=(",", ":")).encode(), sync_dir=is_new)
    if is_new:
        _fsync_dir(path.parent.parent)


def read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def remove_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
