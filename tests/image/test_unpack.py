"""Layer extraction: what a layer says is kept, nothing may land outside the layer's directory."""

from __future__ import annotations

import contextlib
import gzip
import os
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crishim.image.unpack import LayerError, unpack_layer
from tests.image_fixtures import LayerBlob, digest_of, entry, make_tar

pytestmark = pytest.mark.root


def unpack(tmp_path: Path, members: Sequence[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]],
           gzipped: bool = True, dest: Path | None = None) -> Path:
    """Unpack a layer made of `members` into `dest`; the blob is named by its digest, as in the store."""
    tar = make_tar(members)
    layer = LayerBlob.from_tar(tar)
    data = layer.data if gzipped else tar
    blob = tmp_path / "blob" / digest_of(data)[7:]
    blob.parent.mkdir(exist_ok=True)
    blob.write_bytes(data)
    dest = dest or tmp_path / "layer"
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
    assert not (tmp_path / "escaped").exists()
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


# --- hostile layers: nothing outside the layer's own directory may change ---------------------------

VICTIM = "@victim@"  # replaced by the absolute path of a directory outside the store


def store_like(base: Path) -> Path:
    """A store's `layers/` with an earlier layer beside the one being unpacked, and a directory outside
    the store; returns where the new layer goes (`layers/.tmp-...`, as the manager names it)."""
    (base / "layers/keep/bin").mkdir(parents=True)
    (base / "layers/keep/bin/sh").write_bytes(b"\x7fELF")
    (base / "outside/victim").mkdir(parents=True)
    (base / "outside/victim/file").write_bytes(b"precious")
    (base / "outside/victim/sub").mkdir()
    return base / "layers/.tmp-evil"


def snapshot(base: Path, skip: Path) -> dict[str, tuple[object, ...]]:
    """Every path under `base` but `skip`: type, mode, owner, inode, xattrs, and content or link."""
    seen: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in [".", *dirnames, *filenames]:
            path = Path(dirpath, name)
            st = path.lstat()
            body: object = path.read_bytes() if stat.S_ISREG(st.st_mode) else \
                os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            xattrs = {} if stat.S_ISLNK(st.st_mode) else \
                {k: os.getxattr(path, k) for k in os.listxattr(path)}
            links = None if stat.S_ISDIR(st.st_mode) else st.st_nlink  # a dir's count has the new layer
            seen[str(path.relative_to(base))] = (st.st_mode, st.st_uid, st.st_gid, st.st_ino, links,
                                                 body, xattrs)
    return seen


def with_victim(members: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]], victim: Path
                ) -> list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]:
    out: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]] = []
    for member in members:
        info = member[0] if isinstance(member, tuple) else member
        info.linkname = info.linkname.replace(VICTIM, str(victim))
        out.append(member)
    return out


LINK_OUT = entry("lnk", tarfile.SYMTYPE, linkname=VICTIM)
HOSTILE: dict[str, tuple[list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]], str]] = {
    "whiteout-of-dotdot": ([entry(".wh...")], ".wh..."),
    "whiteout-of-dot": ([entry(".wh..")], ".wh.."),
    "whiteout-of-nothing": ([entry(".wh.")], ".wh."),
    "nested-whiteout-of-dotdot": ([entry("sub/", tarfile.DIRTYPE), entry("sub/.wh...")], "sub/.wh..."),
    "nested-whiteout-of-dot": ([entry("sub/.wh..")], "sub/.wh.."),
    "whiteout-of-dotdot-dir-entry": ([entry(".wh.../", tarfile.DIRTYPE)], ".wh..."),
    "below-opaque-marker": ([(entry(".wh..wh..opq/x"), b"x")], ".wh..wh..opq/x"),
    "below-whiteout": ([(entry("sub/.wh.x/y"), b"y")], "sub/.wh.x/y"),
    "whiteout-through-symlink-out": ([LINK_OUT, entry("lnk/.wh.file")], "lnk/.wh.file"),
    "opaque-through-symlink-out": ([LINK_OUT, entry("lnk/.wh..wh..opq")], "lnk/.wh..wh..opq"),
    "whiteout-into-sibling-layer": ([entry("lnk", tarfile.SYMTYPE, linkname="../keep"),
                                     entry("lnk/.wh.bin")], "lnk/.wh.bin"),
    "file-through-symlink-out": ([LINK_OUT, (entry("lnk/new"), b"x")], "lnk/new"),
    "dir-through-symlink-out": ([LINK_OUT, entry("lnk/sub/x/", tarfile.DIRTYPE)], "lnk/sub/x"),
    "hardlink-to-dotdot-dotdot": ([entry("evil", tarfile.LNKTYPE, linkname="../..")], "evil"),
    "hardlink-to-dotdot": ([entry("evil", tarfile.LNKTYPE, linkname="..")], "evil"),
    "hardlink-to-root": ([entry("evil", tarfile.LNKTYPE, linkname="./")], "evil"),
    "hardlink-through-symlink-out": ([LINK_OUT, entry("evil", tarfile.LNKTYPE, linkname="lnk/file")],
                                     "evil"),
    "file-through-file": ([(entry("a"), b"a"), (entry("a/b"), b"b")], "a/b"),
    "dir-swapped-for-symlink": ([entry("d/", tarfile.DIRTYPE), (entry("d/f"), b"f"),
                                 entry("d", tarfile.SYMTYPE, linkname=VICTIM), entry("d/.wh.file")],
                                "d/.wh.file"),
    "long-name": ([(entry("x" * 300), b"x")], "x" * 300),
}


@pytest.mark.parametrize("case", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_layers_are_refused_and_touch_nothing(
        tmp_path: Path, case: tuple[list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]], str]) -> None:
    members, bad = case
    dest = store_like(tmp_path / "store")
    before = snapshot(tmp_path / "store", dest)
    with pytest.raises(LayerError) as caught:
        unpack(tmp_path, with_victim(members, tmp_path / "store/outside/victim"), dest=dest)
    message = str(caught.value)
    assert message.startswith("layer sha256:") and repr(bad) in message, message
    assert snapshot(tmp_path / "store", dest) == before


ALLOWED: dict[str, list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]] = {
    "whiteout-of-symlink-out": [LINK_OUT, entry(".wh.lnk")],
    "dir-over-symlink-out": [LINK_OUT, entry("lnk/", tarfile.DIRTYPE), (entry("lnk/f"), b"in")],
    "file-over-symlink-out": [LINK_OUT, (entry("lnk"), b"in")],
    "opaque-root": [entry(".wh..wh..opq")],
    "opaque-marker-as-dir": [entry("sub/.wh..wh..opq/", tarfile.DIRTYPE)],
    "hardlink-to-symlink-out": [LINK_OUT, entry("hard", tarfile.LNKTYPE, linkname="lnk")],
    "aufs-metadata": [entry(".wh..wh.plnk/", tarfile.DIRTYPE), entry(".wh..wh.aufs")],
    "hardlink-to-itself": [(entry("f"), b"x"), entry("./f", tarfile.LNKTYPE, linkname="f")],
}


@pytest.mark.parametrize("members", ALLOWED.values(), ids=ALLOWED.keys())
def test_odd_but_harmless_layers_stay_inside(
        tmp_path: Path, members: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> None:
    dest = store_like(tmp_path / "store")
    before = snapshot(tmp_path / "store", dest)
    unpack(tmp_path, with_victim(members, tmp_path / "store/outside/victim"), dest=dest)
    assert snapshot(tmp_path / "store", dest) == before
    assert not any(name.startswith(".wh.") for name in os.listdir(dest))


_SEGMENTS = st.one_of(
    st.sampled_from(["..", ".", "", ".wh.", ".wh..", ".wh...", ".wh..wh..opq", ".wh..wh.plnk", ".wh.a",
                     ".wh.lnk", "a", "b", "lnk", "keep", "layers"]),
    st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1,
            max_size=6),
)
_NAMES = st.builds(lambda lead, parts: lead + "/".join(parts), st.sampled_from(["", "/", "./", "../"]),
                   st.lists(_SEGMENTS, min_size=1, max_size=4))
_TYPES = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                          tarfile.CHRTYPE, tarfile.FIFOTYPE])
_LINKS = st.one_of(_NAMES, st.sampled_from([VICTIM, "/", "..", "../keep", "../../outside/victim"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_NAMES, _TYPES, _LINKS), min_size=1, max_size=8))
def test_generated_entry_names_never_change_anything_outside(
        layer: list[tuple[str, bytes, str]]) -> None:
    """Whatever the names, a layer is unpacked or refused with a LayerError; outside stays as it was."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        dest = store_like(base / "store")
        before = snapshot(base / "store", dest)
        members: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]] = [
            (entry(name, kind, linkname=link), b"data") for name, kind, link in layer]
        with contextlib.suppress(LayerError):
            unpack(base, with_victim(members, base / "store/outside/victim"), dest=dest)
        assert snapshot(base / "store", dest) == before


def test_zstd_layer_of_several_frames(tmp_path: Path) -> None:
    """zstd:chunked and other seekable zstd layers are many frames back to back: all are read."""
    tar = make_tar([entry("a/", tarfile.DIRTYPE, 0o755), (entry("a/one"), b"1" * 5000),
                    (entry("a/two"), b"2" * 5000)])
    half = len(tar) // 2
    compressor = zstandard.ZstdCompressor()
    blob = tmp_path / digest_of(tar)[7:]
    blob.write_bytes(compressor.compress(tar[:half]) + compressor.compress(tar[half:]))
    unpack_layer(blob, tmp_path / "layer", digest_of(tar))
    assert (tmp_path / "layer/a/two").read_bytes() == b"2" * 5000
    blob.write_bytes(compressor.compress(tar)[:-8])
    with pytest.raises(LayerError, match="not a valid tar"):
        unpack_layer(blob, tmp_path / "again", digest_of(tar))


# --- formats: what GNU tar writes, unpacked as GNU tar itself unpacks it -----------------------------

def gnu_tar_source(base: Path) -> Path:
    """Files that need the extended headers: sparse files, names and link targets past 100 bytes,
    hard links, a fifo, an empty file and one of exactly one block."""
    src = base / "src"
    deep = src / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / ("f" * 90)).write_bytes(b"long name\n")
    with open(src / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(3 << 20)
        f.write(b"middle" * 1000)
        f.truncate(8 << 20)  # ends in a hole
    with open(src / "sparse-tail", "wb") as f:
        f.seek(1 << 20)
        f.write(b"tail")
    (src / "empty").write_bytes(b"")
    (src / "block").write_bytes(os.urandom(512))
    (src / "big").write_bytes(os.urandom(3 << 20))  # spans several of the reader's chunks
    os.link(src / "big", src / "big-link")
    os.symlink("/" + "t" * 150, src / "long-link")
    os.mkfifo(src / "fifo")
    os.chmod(src / "block", 0o4711)
    return src


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Type, mode, size, content or link target, and hard link groups of everything under `root`."""
    found: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted([*dirnames, *filenames]):
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            body: object = path.read_bytes() if stat.S_ISREG(st.st_mode) else \
                os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            group = inodes.setdefault(st.st_ino, rel) if stat.S_ISREG(st.st_mode) else None
            found[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, body, group)
    return found


@pytest.mark.parametrize("options", [["--format=gnu"], ["--format=posix"],
                                     ["--format=posix", "--sparse-version=0.0"],
                                     ["--format=posix", "--sparse-version=0.1"],
                                     ["--format=posix", "--sparse-version=1.0"], ["--format=ustar"]])
def test_gnu_tar_formats_unpack_as_gnu_tar_unpacks_them(tmp_path: Path, options: list[str]) -> None:
    src = gnu_tar_source(tmp_path)
    archive = tmp_path / "layer.tar"
    ustar = options == ["--format=ustar"]  # no long names or sparse files: only what ustar can hold
    names = ["big", "big-link", "block", "empty", "fifo"] if ustar else ["--sparse", "."]
    subprocess.run(["tar", "-c", "-f", str(archive), "-C", str(src), *options, *names], check=True)
    expected = tmp_path / "expected"
    expected.mkdir()
    subprocess.run(["tar", "-x", "-p", "-f", str(archive), "-C", str(expected)], check=True)
    tar = archive.read_bytes()
    blob = tmp_path / "blobs" / digest_of(gzip.compress(tar))[7:]
    blob.parent.mkdir()
    blob.write_bytes(gzip.compress(tar))
    unpack_layer(blob, tmp_path / "layer", digest_of(tar))
    assert tree(tmp_path / "layer") == tree(expected)
    if not ustar:
        sparse = (tmp_path / "layer/sparse").stat()
        assert sparse.st_blocks * 512 < sparse.st_size  # the holes stay holes


def test_truncated_layer_is_refused(tmp_path: Path) -> None:
    """A stream that ends inside a file's data, or between members, is no layer."""
    tar = make_tar([(entry("a"), b"a" * 5000), (entry("b"), b"b" * 5000)])
    for cut in (1200, 512 * 12):
        blob = tmp_path / f"blob{cut}"
        blob.write_bytes(gzip.compress(tar[:cut]))
        with pytest.raises(LayerError, match="not a valid tar"):
            unpack_layer(blob, tmp_path / f"layer{cut}", digest_of(tar[:cut]))


def test_gzip_of_several_members(tmp_path: Path) -> None:
    """Concatenated gzip members are one stream (gzip(1) and pigz write such files)."""
    tar = make_tar([(entry("a"), b"a" * 5000), (entry("b"), b"b" * 5000)])
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(tar[:3000]) + gzip.compress(tar[3000:]))
    unpack_layer(blob, tmp_path / "layer", digest_of(tar))
    assert (tmp_path / "layer/b").read_bytes() == b"b" * 5000
