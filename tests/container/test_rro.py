"""Recursive read-only mounts through a real server, as critest's "Container Mount Readonly" specs check
them: a host dir with a tmpfs mounted inside it, bound read-only into a container."""

from __future__ import annotations

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
    start,
    status,
)
from tests.harness import CrishimServer, run

pytestmark = pytest.mark.root

READ_ONLY_FS = b"Read-only file system"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CrishimServer]:
    with host_server(tmp_path / "crishim") as s:
        yield s


@pytest.fixture
def host_dir(tmp_path: Path) -> Iterator[Path]:
    """critest's createHostPathForRROMount: `<dir>/tmpfs` is a tmpfs mount point."""
    host = tmp_path / "volume"
    (host / "tmpfs").mkdir(parents=True)
    run(["mount", "-t", "tmpfs", "none", str(host / "tmpfs")])
    try:
        yield host
    finally:
        run(["umount", "-l", str(host / "tmpfs")], check=False)


def rro_mount(host: Path, **fields: object) -> api_pb2.Mount:
    values: dict[str, object] = {"readonly": True, "recursive_read_only": True, "selinux_relabel": True}
    values.update(fields)
    return api_pb2.Mount(host_path=str(host), container_path="/mnt", **values)  # type: ignore[arg-type]


def test_readonly_bind_leaves_submounts_writable_and_rro_does_not(
        server: CrishimServer, busybox_image: str, host_dir: Path) -> None:
    pull(server, busybox_image)
    pod = host_pod(server, "rro")
    plain = create(server, pod, container_config(
        "plain-readonly-mount-with-a-name-long-enough-for-kubelet-63-characters", busybox_image,
        [rro_mount(host_dir, recursive_read_only=False)]))
    recursive = create(server, pod, container_config("recursive-ro", busybox_image, [rro_mount(host_dir)]))
    for cid in (plain, recursive):
        start(server, cid)
        top = exec_sync(server, cid, "touch", "/mnt/top")
        assert top.exit_code != 0 and READ_ONLY_FS in top.stderr

    assert exec_sync(server, plain, "touch", "/mnt/tmpfs/file").exit_code == 0
    assert (host_dir / "tmpfs" / "file").exists()
    below = exec_sync(server, recursive, "touch", "/mnt/tmpfs/foo")
    assert below.exit_code != 0 and READ_ONLY_FS in below.stderr
    assert not (host_dir / "tmpfs" / "foo").exists()

    (mount,) = status(server, recursive).mounts
    assert (mount.container_path, mount.host_path, mount.readonly, mount.recursive_read_only) == \
        ("/mnt", str(host_dir), True, True)
    assert mount.propagation == api_pb2.PROPAGATION_PRIVATE and not mount.HasField("image")
    (mount,) = status(server, plain).mounts
    assert mount.readonly and not mount.recursive_read_only


@pytest.mark.parametrize(("fields", "complaint"), [
    ({"propagation": api_pb2.PROPAGATION_HOST_TO_CONTAINER}, "needs private propagation"),
    ({"propagation": api_pb2.PROPAGATION_BIDIRECTIONAL}, "needs private propagation"),
    ({"readonly": False}, "recursive_read_only needs readonly"),
])
def test_rro_combinations_critest_rejects(server: CrishimServer, busybox_image: str, host_dir: Path,
                                          fields: dict[str, object], complaint: str) -> None:
    pull(server, busybox_image)
    pod = host_pod(server, "rro-bad")
    with pytest.raises(grpc.RpcError) as caught:
        create(server, pod, container_config("bad", busybox_image, [rro_mount(host_dir, **fields)]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert complaint in str(caught.value.details()) and "'/mnt'" in str(caught.value.details())
    listed = server.runtime().ListContainers(api_pb2.ListContainersRequest()).containers
    assert list(listed) == []
    assert not list((server.state_dir / "containers").iterdir())


def test_rro_on_a_handler_that_does_not_claim_it(server: CrishimServer, busybox_image: str,
                                                 host_dir: Path) -> None:
    """crun 1.8.1 has no `features` command, so Status claims no rro for it and CreateContainer refuses."""
    crun = next(h for h in server.runtime().Status(api_pb2.StatusRequest()).runtime_handlers
                if h.name == "crun")
    assert not crun.features.recursive_read_only_mounts
    pull(server, busybox_image)
    pod = host_pod(server, "rro-crun", handler="crun")
    with pytest.raises(grpc.RpcError) as caught:
        create(server, pod, container_config("rro", busybox_image, [rro_mount(host_dir)]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "RROUnsupported" in str(caught.value.details())
    plain = create(server, pod, container_config("plain", busybox_image,
                                                 [rro_mount(host_dir, recursive_read_only=False)]))
    start(server, plain)
    assert exec_sync(server, plain, "touch", "/mnt/tmpfs/file").exit_code == 0
