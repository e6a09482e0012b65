"""kubelet's rotation steps on real files (the CRI side is in test_pod_e2e)."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from crishim.kubelet import logrotate


def test_quantities_as_kubelet_takes_them() -> None:
    assert logrotate.parse_quantity("10Mi") == 10 << 20
    assert logrotate.parse_quantity("100Ki") == 100 << 10
    assert logrotate.parse_quantity("5M") == 5_000_000
    assert logrotate.parse_quantity("4096") == 4096
    for bad in ("", "Mi", "1.5Mi", "-1", "10MB"):
        with pytest.raises(ValueError, match="is not a size"):
            logrotate.parse_quantity(bad)


def test_make_room_cleans_prunes_and_compresses(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    log.write_text("live\n")
    (tmp_path / "0.log.20261201-000000.gz").write_bytes(gzip.compress(b"oldest\n"))
    (tmp_path / "0.log.20261202-000000").write_text("older\n")
    (tmp_path / "0.log.20261203-000000").write_text("newer\n")
    (tmp_path / "0.log.20261203-000000.gz.tmp").write_text("half-made")  # a failed compression
    (tmp_path / "0.log.20261202-000000.gz").write_bytes(gzip.compress(b"older\n"))  # compressed already
    (tmp_path / "1.log").write_text("another container's\n")
    target = logrotate._make_room(str(log), max_files=4)
    # max_files 4: the live log, the one rotated now, and two older ones.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "0.log", "0.log.20261202-000000.gz", "0.log.20261203-000000.gz", "1.log"]
    assert gzip.decompress((tmp_path / "0.log.20261203-000000.gz").read_bytes()) == b"newer\n"
    rotated_name = re.escape(str(log)) + r"\.\d{8}-\d{6}"
    assert re.fullmatch(rotated_name, target)
    assert re.fullmatch(rotated_name, logrotate._make_room(str(log), max_files=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.log", "1.log"]
