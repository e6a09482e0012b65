"""Atomic records, the record log and the group-commit syncer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crishim.store import RecordLog, Syncer, read_json, recordlog, write_bytes_atomic, write_json_atomic
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


async def test_record_log_keeps_the_last_record_of_each_key_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / "records.log"
    records = RecordLog(path)
    assert await records.open() == {}
    await records.put("a", {"state": "CREATING"})
    await records.put("b", {"state": "READY"})
    await records.put("a", {"state": "READY"})
    await records.delete("b")
    await records.close()
    again = RecordLog(path)
    assert await again.open() == {"a": {"state": "READY"}}
    assert path.read_bytes().count(b"\n") == 1  # compacted when opened
    await again.close()


async def test_record_log_cuts_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "records.log"
    records = RecordLog(path)
    await records.open()
    await records.put("a", {"n": 1})
    await records.close()
    path.write_bytes(path.read_bytes() + b'{"id":"b","record":{"n"')  # a crash in the middle of an append
    again = RecordLog(path)
    assert await again.open() == {"a": {"n": 1}}
    await again.put("c", {"n": 3})
    await again.close()
    assert await RecordLog(path).open() == {"a": {"n": 1}, "c": {"n": 3}}


async def test_record_log_compacts_as_it_grows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recordlog, "COMPACT_MIN_BYTES", 1000)
    path = tmp_path / "records.log"
    records = RecordLog(path)
    await records.open()
    for n in range(500):
        await records.put("pod", {"n": n, "pad": "x" * 50})
    assert path.stat().st_size < 1000 + 100  # without compaction: ~40 kB
    await records.close()
    assert await RecordLog(path).open() == {"pod": {"n": 499, "pad": "x" * 50}}
