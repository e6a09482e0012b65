"""Atomic records and the group-commit syncer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crishim.store import Syncer, read_json, write_bytes_atomic, write_json_atomic
from crishim.store import syncer as syncer_module


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path: Path) -> None:
    record = tmp_path / "pods" / "a" / "record.json"
    write_json_atomic(record, {"state": "CREATING"}, durable=False)
    write_json_atomic(record, {"state": "READY"})
    assert read_json(record) == {"state": "READY"}
    assert sorted(p.name for p in record.parent.iterdir()) == ["record.json"]


def test_failed_write_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "blob"
    write_bytes_atomic(target, b"old")
    with pytest.raises(TypeError):
        write_bytes_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["blob"]


async def test_syncer_fsyncs_marked_records_in_batches(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[set[Path]] = []
    real = syncer_module.sync_paths

    def spy(paths: set[Path], settled_dirs: set[Path] | None = None) -> None:
        synced.append(set(paths))
        real(paths, settled_dirs)

    monkeypatch.setattr(syncer_module, "sync_paths", spy)
    syncer = Syncer()
    syncer.start()
    paths = [tmp_path / f"r{i}.json" for i in range(5)]
    for path in paths:
        write_json_atomic(path, {"n": path.name}, durable=False)
        syncer.mark(path)
    gone = tmp_path / "removed.json"
    write_json_atomic(gone, {}, durable=False)
    syncer.mark(gone)
    os.unlink(gone)  # removed before its turn: skipped, not an error
    await syncer.flush()
    assert set().union(*synced) == {*paths, gone}
    assert len(synced) <= 6
    await syncer.close()


def test_directory_above_is_fsynced_once_then_only_the_holding_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced_dirs: list[Path] = []
    real = syncer_module._fsync_path

    def spy(path: Path, directory: bool = False) -> None:
        if directory:
            synced_dirs.append(path)
        real(path, directory)

    monkeypatch.setattr(syncer_module, "_fsync_path", spy)
    records = tmp_path / "records"
    settled: set[Path] = set()
    batches = []
    for name in ("a.json", "b.json"):
        write_json_atomic(records / name, {}, durable=False)
        syncer_module.sync_paths({records / name}, settled)
        batches.append(set(synced_dirs))
        synced_dirs.clear()
    assert batches == [{records, tmp_path}, {records}]  # the new directory's own entry: once
