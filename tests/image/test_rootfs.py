"""Container root filesystems: the image's layers under an overlay, whiteouts and opaque dirs applied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crishim.image import ImageManager
from tests.harness import run
from tests.image_fixtures import TestImages

pytestmark = pytest.mark.root


async def test_overlay_rootfs_of_a_multilayer_image(tmp_path: Path, manager: ImageManager,
                                                    test_images: TestImages) -> None:
    record = await manager.pull(test_images.multilayer.ref)
    rootfs = await manager.prepare_rootfs(record.id, "c1", tmp_path / "c1")
    assert rootfs.lower_dirs == [manager.store.layer_path(layer.diff_id)
                                 for layer in reversed(record.layers)]
    assert await manager.prepare_rootfs(record.id, "c1", tmp_path / "c1") is rootfs
    try:
        await rootfs.mount()
        await rootfs.mount()
        merged = rootfs.merged
        assert not (merged / "data/gone").exists()
        assert sorted(os.listdir(merged / "data/dir")) == ["new"]
        assert (merged / "data/keep").stat().st_uid == 1000
        out = run(["chroot", str(merged), "/bin/sh", "-c", "cat /etc/passwd; id -u"]).stdout
        assert "user:x:1000" in out and out.endswith("0\n")
        (merged / "data/written").write_text("by the container")
        assert (rootfs.upper_dir / "data/written").read_text() == "by the container"
        await manager.remove(record.id)  # not in use per the checker: the image goes ...
        assert manager.get(record.id) is None
        assert all(d.is_dir() for d in rootfs.lower_dirs)  # ... but its layers stay for c1
    finally:
        await rootfs.unmount()
        await rootfs.unmount()
    assert rootfs.merged.stat().st_dev == rootfs.upper_dir.parent.stat().st_dev  # unmounted
    await manager.release_rootfs("c1")
    await manager.release_rootfs("c1")
    assert not rootfs.upper_dir.exists()
    assert not any(d.exists() for d in rootfs.lower_dirs)


async def test_prepared_rootfs_survives_restart(tmp_path: Path, manager: ImageManager,
                                                test_images: TestImages) -> None:
    record = await manager.pull(test_images.busybox.ref)
    rootfs = await manager.prepare_rootfs(record.id, "c2", tmp_path / "c2")
    await manager.remove(record.id)
    await manager.close()
    again = ImageManager(root=manager.store.root)
    await again.start()
    try:
        assert all(d.is_dir() for d in rootfs.lower_dirs)
        await again.release_rootfs("c2")
        assert not any(d.exists() for d in rootfs.lower_dirs)
        assert not rootfs.upper_dir.exists()
    finally:
        await again.close()
