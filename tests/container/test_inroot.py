"""Paths inside a hostile rootfs never resolve out of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crishim.container.inroot import read_in_root, resolve_in_root


@pytest.fixture
def host_and_root(tmp_path: Path) -> tuple[Path, Path]:
    host = tmp_path / "host"
    (host / "etc").mkdir(parents=True)
    (host / "etc/passwd").write_text("host-secret\n")
    root = tmp_path / "rootfs"
    (root / "usr/share").mkdir(parents=True)
    (root / "usr/share/passwd").write_text("in-image\n")
    return host, root


def test_absolute_symlink_to_a_host_dir_stays_inside(host_and_root: tuple[Path, Path]) -> None:
    host, root = host_and_root
    (root / "etc").symlink_to(host / "etc")  # /etc -> <host>/etc, read as <root><host>/etc
    assert read_in_root(str(root), "/etc/passwd") is None
    with pytest.raises(OSError):
        resolve_in_root(str(root), "/etc/passwd")


def test_relative_symlinks_and_dotdot_are_clamped_at_the_root(host_and_root: tuple[Path, Path]) -> None:
    _, root = host_and_root
    (root / "etc").mkdir()
    (root / "etc/passwd").symlink_to("../../../../../usr/share/passwd")
    assert read_in_root(str(root), "/etc/passwd") == b"in-image\n"
    assert read_in_root(str(root), "/../../../etc/passwd") == b"in-image\n"
    assert resolve_in_root(str(root), "etc/passwd") == os.path.realpath(root / "usr/share/passwd")
    assert resolve_in_root(str(root), "/") == os.path.realpath(root)


def test_non_files_and_limits(host_and_root: tuple[Path, Path]) -> None:
    _, root = host_and_root
    os.mkfifo(root / "fifo")
    assert read_in_root(str(root), "/fifo") is None
    assert read_in_root(str(root), "/usr") is None
    assert read_in_root(str(root), "/missing") is None
    assert read_in_root(str(root), "/usr/share/passwd", limit=2) == b"in"
    (root / "proc-link").symlink_to("/proc/self/root/etc")
    assert read_in_root(str(root), "/proc-link/passwd") is None
