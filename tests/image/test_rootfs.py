"""Container root filesystems: the image's layers under an overlay, whiteouts and opaque dirs applied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crishim.errors import FailedPrecondition
from crishim.image import ImageManager
from crishim.image.rootfs import MAX_MOUNT_OPTIONS
from crishim.image.rootfs import _short_names as short_names
from tests.harness import run
from tests.image.built import push_deep_image
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


async def test_hundred_layer_stack_mounts_beyond_one_page(tmp_path: Path, manager: ImageManager,
                                                          test_images: TestImages) -> None:
    """~40 store paths fill mount(2)'s page; the fs-context mount takes each layer on its own."""
    record = await manager.pull(push_deep_image(test_images, 100).ref)
    rootfs = await manager.prepare_rootfs(record.id, "deep", tmp_path / "deep")
    assert len(rootfs.options()) > MAX_MOUNT_OPTIONS
    with pytest.raises(FailedPrecondition, match=r"exceed one page .*lowerdir\+"), \
            short_names(rootfs.lower_dirs) as lower:
        rootfs._mount_options(lower)  # what a kernel without lowerdir+ would answer
    try:
        await rootfs.mount()
        out = run(["chroot", str(rootfs.merged), "/bin/cat", "/etc/hostname", "/top",
                   "/deep/which", "/deep/1"]).stdout
        assert out == "busybox\ntop layer\n" + "99" + "1"  # `which` from the top layer, `1` from the 2nd
        assert len(os.listdir(rootfs.merged / "deep")) == 100  # 99 layers' files and `which`
    finally:
        await rootfs.unmount()
        await manager.release_rootfs("deep")


async def test_short_stack_through_mount2(tmp_path: Path, manager: ImageManager,
                                          test_images: TestImages) -> None:
    """The fallback for kernels without lowerdir+ still mounts what fits in a page."""
    record = await manager.pull(test_images.multilayer.ref)
    rootfs = await manager.prepare_rootfs(record.id, "short", tmp_path / "short")
    try:
        with short_names(rootfs.lower_dirs) as lower:
            rootfs._mount_options(lower)
        assert sorted(os.listdir(rootfs.merged / "data/dir")) == ["new"]
    finally:
        await rootfs.unmount()
        await manager.release_rootfs("short")


async def test_stack_beyond_the_overlay_limit_is_a_clear_error(tmp_path: Path, manager: ImageManager,
                                                               test_images: TestImages) -> None:
    record = await manager.pull(push_deep_image(test_images, 501).ref)
    rootfs = await manager.prepare_rootfs(record.id, "too-deep", tmp_path / "too-deep")
    with pytest.raises(FailedPrecondition, match=r"501 layers.*limit is 500"):
        await rootfs.mount()
    assert rootfs.merged.stat().st_dev == rootfs.upper_dir.parent.stat().st_dev  # not mounted
    await manager.release_rootfs("too-deep")
