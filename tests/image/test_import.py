"""`crishim images import`: OCI layouts (directory and tar) and docker save tarballs, made by skopeo."""

from __future__ import annotations

from pathlib import Path

import pytest

from crishim.errors import InvalidArgument
from crishim.image import ImageManager
from tests.harness import run
from tests.image_fixtures import TestImages

pytestmark = pytest.mark.root


async def test_oci_layout_directory(manager: ImageManager, test_images: TestImages) -> None:
    (record,) = await manager.import_archive(test_images.layout)
    assert record.id == test_images.busybox.id
    assert record.repo_tags == []  # the layout only says "1": no repository to name it by
    assert manager.get(record.id) is record
    assert manager.store.layer_path(record.layers[0].diff_id).joinpath("bin/busybox").exists()


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
    assert list(manager.store.ingest.iterdir()) == []


async def test_bad_archives(tmp_path: Path, manager: ImageManager) -> None:
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar" * 100)
    for path, words in ((garbage, "not a usable image archive"), (tmp_path / "nope", "no such"),
                        (tmp_path, "neither an OCI image layout")):
        with pytest.raises(InvalidArgument, match=words):
            await manager.import_archive(path)
    assert manager.list() == []


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
