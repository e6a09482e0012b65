"""Image volumes (KEP 4639) through a real server, mirroring critest's "Image Volume" specs: a pulled
image's layers mounted read-only (lower dirs only) under the container's dir and bound into it, whole or
an `image_sub_path` resolved inside the image; gone with the container, whatever way it goes."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.container.hostserver import (
    container_config,
    create,
    exec_sync,
    host_pod,
    host_server,
    pull,
    remove,
    start,
    status,
)
from tests.harness import CrishimServer, mounts_below, poll
from tests.image_fixtures import LayerBlob, TestImages, entry, make_tar
from tests.sandbox.podutil import stop_and_remove

pytestmark = pytest.mark.root

VOLUME_PATH = "/mnt/image-volume"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CrishimServer]:
    with host_server(tmp_path / "crishim") as s:
        yield s


@pytest.fixture(scope="module")
def links_image(test_images: TestImages) -> str:
    """One layer (the read-only overlay pads it with the empty layer): an /etc of its own, a file, and
    symlinks that point out of the image if followed on the host."""
    layer = LayerBlob.from_tar(make_tar([
        entry("etc/", tarfile.DIRTYPE, 0o755),
        (entry("etc/image-marker"), b"from the image\n"),
        entry("data/", tarfile.DIRTYPE, 0o755),
        (entry("data/hello"), b"hello\n"),
        entry("hostetc", tarfile.SYMTYPE, linkname="/etc"),
        entry("data/up", tarfile.SYMTYPE, linkname="../../../.."),
    ]))
    return test_images.registry.push_image("volume-links", ["1"], [layer]).ref


def volume(image: str, path: str = VOLUME_PATH, sub_path: str = "", **fields: object) -> api_pb2.Mount:
    values: dict[str, object] = {"readonly": True}
    values.update(fields)
    spec = api_pb2.ImageSpec(image=image, user_specified_image=image)
    return api_pb2.Mount(container_path=path, image=spec, image_sub_path=sub_path,
                         **values)  # type: ignore[arg-type]


def leftovers(server: CrishimServer) -> tuple[list[str], list[str]]:
    """Image volume mounts and records still there."""
    mounts = [m for m in mounts_below(server.root) if "/image-volumes/" in m]
    records = sorted(p.name for p in (server.state_dir / "images" / "rootfs").glob("*-volume-*"))
    return mounts, records


def create_error(server: CrishimServer, pod: tuple[str, api_pb2.PodSandboxConfig],
                 config: api_pb2.ContainerConfig) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        create(server, pod, config)
    return caught.value


def test_image_volume_is_mounted_read_only_and_reported(server: CrishimServer, busybox_image: str,
                                                       test_images: TestImages) -> None:
    busybox_id = pull(server, busybox_image)
    layered_id = pull(server, test_images.multilayer.ref)
    pod = host_pod(server, "volumes")
    cid = create(server, pod, container_config("with-volumes", busybox_image, [
        volume(layered_id), volume(busybox_image, "/mnt/busybox")]))

    # critest: the mount's ImageSpec carries the pulled image's ref (PullImage's image_ref).
    layered, whole = status(server, cid).mounts
    assert (layered.container_path, layered.image.image, layered.image.image_ref) == \
        (VOLUME_PATH, layered_id, layered_id)
    assert (whole.image.image, whole.image.image_ref) == (busybox_image, busybox_id)
    for mount in (layered, whole):
        assert mount.readonly and mount.image_sub_path == ""
        assert mount.host_path.startswith(f"{server.state_dir}/containers/{cid}/image-volumes/")
        assert os.path.ismount(mount.host_path)

    start(server, cid)
    assert exec_sync(server, cid, "ls", "-A", f"{VOLUME_PATH}/data/dir").stdout == b"new\n"
    assert exec_sync(server, cid, "test", "-e", f"{VOLUME_PATH}/data/gone").exit_code == 1
    assert exec_sync(server, cid, "cat", f"{VOLUME_PATH}/data/keep").stdout == b"keep"
    write = exec_sync(server, cid, "touch", f"{VOLUME_PATH}/test-write")
    assert write.exit_code != 0 and b"Read-only file system" in write.stderr
    # Not noexec: a binary of the volume runs.
    listed = exec_sync(server, cid, "/mnt/busybox/bin/ls", "/mnt/busybox")
    assert listed.exit_code == 0 and b"bin\n" in listed.stdout

    # The image is in use while the container exists, as its rootfs would be.
    images = server.images()
    with pytest.raises(grpc.RpcError) as caught:
        images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=layered_id)))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    assert leftovers(server) == ([layered.host_path, whole.host_path],
                                 [f"{cid}-volume-0.json", f"{cid}-volume-1.json"])
    remove(server, cid)
    # RemoveContainer answers once the container is gone; its files go right after.
    poll(lambda: leftovers(server) == ([], []), what="the volumes to be unmounted and forgotten")
    poll(lambda: not (server.state_dir / "containers" / cid).exists(), what="the container's dir to go")
    images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=layered_id)))
    assert images.ImageStatus(api_pb2.ImageStatusRequest(
        image=api_pb2.ImageSpec(image=layered_id))).image.id == ""


@pytest.mark.parametrize("handler", ["", "crun"])
def test_image_sub_path_stays_inside_the_image(server: CrishimServer, busybox_image: str,
                                              links_image: str, handler: str) -> None:
    pull(server, busybox_image)
    pull(server, links_image)
    pod = host_pod(server, "subpaths", handler)
    cid = create(server, pod, container_config("subpaths", busybox_image, [
        volume(busybox_image, "/mnt/etc", "etc"),
        volume(links_image, "/mnt/hostetc", "hostetc"),
        volume(links_image, "/mnt/up", "data/up/../.."),
        volume(links_image, "/mnt/dotdot", "../../../etc/"),
    ]))
    start(server, cid)
    # critest: the sub path's content sits at the mount point, not the image's root.
    assert exec_sync(server, cid, "ls", "/mnt/etc/passwd").exit_code == 0
    assert exec_sync(server, cid, "ls", "/mnt/etc/etc/passwd").exit_code != 0
    # Symlinks and `..` are clamped at the image's root: never the host's /etc or /.
    for path in ("/mnt/hostetc", "/mnt/dotdot"):
        assert exec_sync(server, cid, "ls", "-A", path).stdout == b"image-marker\n", path
    assert exec_sync(server, cid, "cat", "/mnt/up/data/hello").stdout == b"hello\n"
    statuses = {m.container_path: m for m in status(server, cid).mounts}
    assert statuses["/mnt/hostetc"].image_sub_path == "hostetc"
    assert statuses["/mnt/hostetc"].host_path.endswith("/image-volumes/1/rootfs/etc")


@pytest.mark.parametrize(("sub_path", "code", "complaint"), [
    ("not-existing", grpc.StatusCode.NOT_FOUND, "does not exist in the image"),
    ("etc/image-marker", grpc.StatusCode.INVALID_ARGUMENT, "is not a directory"),
    ("etc/image-marker/x", grpc.StatusCode.INVALID_ARGUMENT, "Not a directory"),
])
def test_bad_image_sub_path_fails_and_leaves_nothing(server: CrishimServer, busybox_image: str,
                                                    links_image: str, sub_path: str,
                                                    code: grpc.StatusCode, complaint: str) -> None:
    pull(server, busybox_image)
    pull(server, links_image)
    pod = host_pod(server, "bad-subpath")
    error = create_error(server, pod, container_config("bad", busybox_image, [
        volume(busybox_image, "/mnt/fine"), volume(links_image, sub_path=sub_path)]))
    assert error.code() == code
    details = str(error.details())
    assert details.startswith("ImageVolumeMountFailed: ") and repr(sub_path) in details
    assert complaint in details and repr(VOLUME_PATH) in details
    assert leftovers(server) == ([], [])
    assert list(server.runtime().ListContainers(api_pb2.ListContainersRequest()).containers) == []
    assert not list((server.state_dir / "containers").iterdir())


def test_image_volume_requests_refused(server: CrishimServer, busybox_image: str,
                                      test_images: TestImages) -> None:
    pull(server, busybox_image)
    pod = host_pod(server, "refused")

    def refused(mount: api_pb2.Mount) -> tuple[grpc.StatusCode, str]:
        error = create_error(server, pod, container_config("refused", busybox_image, [mount]))
        return error.code(), str(error.details())

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    # critest: a writable image volume is rejected.
    code, details = refused(volume(busybox_image, readonly=False))
    assert code == invalid and "must be readonly" in details
    code, details = refused(volume(busybox_image, host_path="/tmp"))
    assert code == invalid and "host_path must be empty" in details
    code, details = refused(api_pb2.Mount(container_path="/mnt", host_path="/tmp", image_sub_path="etc"))
    assert code == invalid and "image_sub_path" in details
    code, details = refused(volume(busybox_image, sub_path="et\0c"))
    assert code == invalid and "NUL" in details
    # Not pulled: kubelet pulls image volumes first; crishim never does.
    code, details = refused(volume(test_images.with_user.ref))
    assert code == grpc.StatusCode.NOT_FOUND
    assert details.startswith("ImageVolumeMountFailed: ") and "pull it first" in details
    assert leftovers(server) == ([], [])
    assert not list((server.state_dir / "containers").iterdir())


def test_image_volumes_across_a_crash(server: CrishimServer, busybox_image: str, links_image: str) -> None:
    pull(server, busybox_image)
    pull(server, links_image)
    pod = host_pod(server, "crashing")
    kept = create(server, pod, container_config("kept", busybox_image, [volume(links_image)]))
    start(server, kept)
    half = create(server, pod, container_config("half-made", busybox_image, [volume(links_image)]))
    (half_mount,) = status(server, half).mounts

    server.kill9()
    # As if crishim died inside CreateContainer, before the container's record was written.
    (server.state_dir / "containers" / half / "container.json").unlink()
    server.start()

    assert not os.path.exists(half_mount.host_path) and not os.path.ismount(half_mount.host_path)
    ids = [c.id for c in server.runtime().ListContainers(api_pb2.ListContainersRequest()).containers]
    assert ids == [kept]
    (mount,) = status(server, kept).mounts
    assert mount.image.image_ref and os.path.ismount(mount.host_path)
    assert exec_sync(server, kept, "cat", f"{VOLUME_PATH}/data/hello").stdout == b"hello\n"
    assert leftovers(server) == ([mount.host_path], [f"{kept}-volume-0.json"])
    stop_and_remove(server, pod[0])  # RemovePodSandbox removes the container, and so its volume
    assert leftovers(server) == ([], [])
