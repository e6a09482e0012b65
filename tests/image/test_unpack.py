"""Layer extraction: what a layer says is kept, nothing may land outside the layer's directory."""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from crishim.image.unpack import LayerError, unpack_layer
from tests.image_fixtures import LayerBlob, entry, make_tar

pytestmark = pytest.mark.root


def unpack(tmp_path: Path, members: Sequence[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]],
           gzipped: bool = True) -> Path:
    tar = make_tar(members)
    layer = LayerBlob.from_tar(tar)
    blob = tmp_path / "blob"
    blob.write_bytes(layer.data if gzipped else tar)
    dest = tmp_path / "layer"
    unpack_layer(blob, dest, layer.diff_id)
    return dest


def test_files_links_devices_and_metadata(tmp_path: Path) -> None:
    xattr = entry("bin/ping", mode=0o4755)
    xattr.pax_headers = {"SCHILY.xattr.user.note": "hi", "SCHILY.xattr.trusted.overlay.opaque": "y"}
    dest = unpack(tmp_path, [
        entry("./", tarfile.DIRTYPE, 0o755),
        entry("bin/", tarfile.DIRTYPE, 0o755),
        (entry("bin/busybox", mode=0o755, uid=0), b"\x7fELF"),
        entry("bin/sh", tarfile.LNKTYPE, linkname="bin/busybox"),
        entry("bin/ls", tarfile.SYMTYPE, linkname="/bin/busybox"),
        (xattr, b"ping"),
        entry("home/user/", tarfile.DIRTYPE, 0o700, uid=1000, gid=1000, mtime=1234),
        (entry("home/user/.profile", mode=0o600, uid=1000, gid=1000), b"export X=1\n"),
        entry("dev/null", tarfile.CHRTYPE, 0o666),
        entry("run/fifo", tarfile.FIFOTYPE, 0o600),
    ], gzipped=False)
    sh, busybox = (dest / "bin/sh").stat(), (dest / "bin/busybox").stat()
    assert sh.st_ino == busybox.st_ino and busybox.st_nlink == 2
    assert os.readlink(dest / "bin/ls") == "/bin/busybox"
    ping = (dest / "bin/ping").lstat()
    assert stat.S_IMODE(ping.st_mode) == 0o4755
    assert os.getxattr(dest / "bin/ping", "user.note") == b"hi"
    assert "trusted.overlay.opaque" not in os.listxattr(dest / "bin/ping")
    home = (dest / "home/user").stat()
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode), home.st_mtime) == \
        (1000, 1000, 0o700, 1234)
    assert (dest / "home/user/.profile").stat().st_uid == 1000
    assert stat.S_ISCHR((dest / "dev/null").lstat().st_mode)
    assert stat.S_ISFIFO((dest / "run/fifo").lstat().st_mode)


def test_whiteouts_become_overlay_whiteouts(tmp_path: Path) -> None:
    dest = unpack(tmp_path, [
        entry("etc/.wh.motd"),
        entry("var/cache/", tarfile.DIRTYPE, 0o755),
        entry("var/cache/.wh..wh..opq"),
        (entry("var/cache/new"), b"x"),
        entry("x/.wh..wh.plnk"),
    ])
    motd = (dest / "etc/motd").lstat()
    assert stat.S_ISCHR(motd.st_mode) and motd.st_rdev == os.makedev(0, 0)
    assert not (dest / "etc/.wh.motd").exists()
    assert os.getxattr(dest / "var/cache", "trusted.overlay.opaque") == b"y"
    assert (dest / "var/cache/new").read_bytes() == b"x"
    assert not (dest / "x/.wh..wh.plnk").exists()


@pytest.mark.parametrize("members", [
    [(entry("../escaped"), b"x")],
    [(entry("a/../../escaped"), b"x")],
    [entry("evil", tarfile.LNKTYPE, linkname="../../etc/passwd")],
    [entry("evil", tarfile.LNKTYPE, linkname="/etc/passwd")],
    [entry("up", tarfile.SYMTYPE, linkname="/"), (entry("up/tmp/escaped"), b"x")],
    [entry("up", tarfile.SYMTYPE, linkname=".."), entry("up/.wh.x")],
    [entry("up", tarfile.SYMTYPE, linkname="/etc"), entry("evil", tarfile.LNKTYPE,
                                                          linkname="up/passwd")],
], ids=["dotdot", "inner-dotdot", "hardlink-dotdot", "hardlink-absolute", "through-symlink",
        "whiteout-through-symlink", "hardlink-through-symlink"])
def test_escapes_are_refused(tmp_path: Path, members: list[tarfile.TarInfo]) -> None:
    with pytest.raises(LayerError):
        unpack(tmp_path, members)
    outside = [p.name for p in tmp_path.iterdir()]
    assert sorted(outside) == ["blob", "layer"]
    assert not Path("/tmp/escaped").exists()


def test_diff_id_mismatch_is_refused(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(LayerBlob.from_tar(make_tar([(entry("a"), b"a")])).data)
    with pytest.raises(LayerError, match="uncompressed content"):
        unpack_layer(blob, tmp_path / "layer", "sha256:" + "0" * 64)


def test_garbage_is_not_a_layer(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"\x1f\x8b" + b"garbage" * 100)
    with pytest.raises(LayerError, match="not a valid tar"):
        unpack_layer(blob, tmp_path / "layer", "sha256:" + "0" * 64)
