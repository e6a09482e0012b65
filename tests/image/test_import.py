"""`crishim images import`: OCI layouts (directory and tar) and docker save tarballs, made by skopeo."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from crishim.errors import InvalidArgument
from crishim.image import ImageManager
from crishim.image.archive import ImportCancelled, ImportMonitor
from crishim.image.store import Store
from tests.harness import run
from tests.image_fixtures import TestImages, digest_of, entry, make_tar

pytestmark = pytest.mark.root


async def test_oci_layout_directory(manager: ImageManager, test_images: TestImages) -> None:
    (record,) = await manager.import_archive(test_images.layout)
    assert record.id == test_images.busybox.id
    assert record.repo_tags == []  # the layout only says "1": no repository to name it by
    assert manager.get(record.id) is record
    assert manager.store.layer_path(record.layers[0].diff_id).joinpath("bin/busybox").exists()
    # The user's layout is copied, never linked: changing it later cannot change the store.
    layer_blob = record.layers[0].digest[7:]
    assert (test_images.layout / "blobs/sha256" / layer_blob).stat().st_nlink == 1


async def test_oci_archive_and_docker_save(tmp_path: Path, manager: ImageManager,
                                           test_images: TestImages) -> None:
    oci_tar, docker_tar = tmp_path / "oci.tar", tmp_path / "docker.tar"
    source = f"oci:{test_images.layout}:1"
    run(["skopeo", "copy", "--quiet", source, f"oci-archive:{oci_tar}:example.test/busybox:1"])
    run(["skopeo", "copy", "--quiet", source, f"docker-archive:{docker_tar}:example.test/saved:2"])
    (from_oci,) = await manager.import_archive(oci_tar)
    assert from_oci.id == test_images.busybox.id
    assert from_oci.repo_tags == ["example.test/busybox:1"]
    assert from_oci.repo_digests == [f"example.test/busybox@{test_images.busybox.manifest_digest}"]
    (from_docker,) = await manager.import_archive(docker_tar)
    assert from_docker.repo_tags == ["example.test/busybox:1", "example.test/saved:2"]
    assert manager.get("example.test/saved:2") is from_docker
    assert store_leftovers(manager.store) == []
    # Unpacked archives are linked into the store, and their scratch copy is gone.
    assert {manager.store.blob_path(d).stat().st_nlink for d in from_docker.blobs} == {1}


def store_leftovers(store: Store) -> list[str]:
    """Scratch and ingest files, and blobs or layers that no image in the index names."""
    named = {d[7:] for image in store.load_index()["images"]
             for d in [*image["blobs"], *(layer["diff_id"] for layer in image["layers"])]}
    found = [p.name for p in store.ingest.iterdir()]
    found += [p.name for p in (*store.blobs.iterdir(), *store.layers.iterdir())
              if p.name not in named and p != store.empty_layer]
    return found


async def test_cancelled_import_leaves_nothing(tmp_path: Path, manager: ImageManager,
                                               test_images: TestImages) -> None:
    """Cancelled once the first of three layers is unpacked: that layer, the blobs and scratch go."""
    archive = tmp_path / "multi.tar"
    run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{test_images.multilayer.ref}",
         f"oci-archive:{archive}:example.test/multi:1"])
    monitor = ImportMonitor()
    layers_done: list[dict[str, Any]] = []

    def cancel_after_a_layer(event: dict[str, Any]) -> None:
        if event["event"] == "layer":
            layers_done.append(event)
            monitor.cancelled.set()

    monitor.report = cancel_after_a_layer
    with pytest.raises(ImportCancelled):
        await manager.import_archive(archive, monitor)
    assert [e["number"] for e in layers_done] == [1]
    assert manager.list() == []
    assert store_leftovers(manager.store) == []
    (record,) = await manager.import_archive(archive)  # and the next import of it works
    assert record.id == test_images.multilayer.id and record.repo_tags == ["example.test/multi:1"]


async def test_bad_archives(tmp_path: Path, manager: ImageManager) -> None:
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar" * 100)
    for path, words in ((garbage, "not a usable image archive"), (tmp_path / "nope", "no such"),
                        (tmp_path, "neither an OCI image layout")):
        with pytest.raises(InvalidArgument, match=words):
            await manager.import_archive(path)
    assert manager.list() == []


def docker_save(path: Path, name: str, layers: list[bytes], links: dict[int, str] | None = None,
                manifest: list[dict[str, Any]] | None = None) -> Path:
    """A `docker save` archive as Docker before 25 wrote it: `<i>/layer.tar` per layer, where `links`
    makes layer i a symlink instead (Docker links a duplicate layer to the first: `../0/layer.tar`)."""
    spec = {"architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(layer) for layer in layers]}}
    members: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]] = [
        (entry("config.json"), json.dumps(spec).encode())]
    for i, layer in enumerate(layers):
        target = (links or {}).get(i)
        members.append(entry(f"{i}/layer.tar", tarfile.SYMTYPE, linkname=target) if target
                       else (entry(f"{i}/layer.tar"), layer))
    manifest = manifest or [{"Config": "config.json", "RepoTags": [name],
                             "Layers": [f"{i}/layer.tar" for i in range(len(layers))]}]
    members.append((entry("manifest.json"), json.dumps(manifest).encode()))
    path.write_bytes(make_tar(members))
    return path


async def test_legacy_docker_save_with_linked_layers(tmp_path: Path, manager: ImageManager) -> None:
    layer = make_tar([(entry("same"), b"same content")])
    other = make_tar([(entry("other"), b"other")])
    archive = docker_save(tmp_path / "legacy.tar", "example.test/legacy:1", [layer, other, layer],
                          links={2: "../0/layer.tar"})
    (record,) = await manager.import_archive(archive)
    assert [x.diff_id for x in record.layers] == [digest_of(layer), digest_of(other), digest_of(layer)]
    assert manager.get("example.test/legacy:1") is record
    assert store_leftovers(manager.store) == []


async def test_malformed_docker_saves(tmp_path: Path, manager: ImageManager) -> None:
    layer = make_tar([(entry("file"), b"content")])
    cases = {
        "escaping link": ({"links": {0: "../../../etc/passwd"}}, "outside the archive"),
        "missing layer": ({"manifest": [{"Config": "config.json", "Layers": ["9/layer.tar"]}]},
                          "has no file '9/layer.tar'"),
        "no Layers": ({"manifest": [{"Config": "config.json"}]}, "malformed manifest.json"),
        "not a list": ({"manifest": {"Config": "config.json"}}, "malformed manifest.json"),
    }
    for case, (fields, words) in cases.items():
        archive = docker_save(tmp_path / "bad.tar", "example.test/bad:1", [layer], **fields)
        with pytest.raises(InvalidArgument, match=words):
            await manager.import_archive(archive)
        assert manager.list() == [], case
        assert store_leftovers(manager.store) == [], case


def test_cli_import_command(tmp_path: Path, test_images: TestImages) -> None:
    import sys

    from tests.harness import REPO
    archive = tmp_path / "oci.tar"
    run(["skopeo", "copy", "--quiet", f"oci:{test_images.layout}:1",
         f"oci-archive:{archive}:example.test/cli:1"])
    state = tmp_path / "state"
    result = run([sys.executable, "-m", "crishim", "--state-dir", str(state), "images", "import",
                  str(archive)], cwd=REPO)
    assert result.stdout.split() == [test_images.busybox.id, "example.test/cli:1"]
    missing = run([sys.executable, "-m", "crishim", "--state-dir", str(state), "images", "import",
                   str(tmp_path / "nope.tar")], cwd=REPO, check=False)
    assert missing.returncode == 1 and "nope.tar" in missing.stderr
