"""The container RPCs, driven with the CreateContainer request crictl really sent (captured), on real
runc and conmon; the pod and the image come from the test's stand-ins instead of their managers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crishim.api.runtime.v1 import api_pb2
from crishim.container.manager import ContainerManager
from crishim.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from crishim.sandbox.model import Sandbox
from crishim.server.containers import ContainerMixins
from tests.container.ctrutil import IMAGE, Env, Image, Pod
from tests.harness import shared_dir

pytestmark = pytest.mark.root

CAPTURE = "captures/crictl-containerd/raw/22-RuntimeService.CreateContainer.req.bin"


@dataclass
class Sandboxes:
    pod: Sandbox

    def require(self, sandbox_id: str) -> Sandbox:
        if sandbox_id != self.pod.id:
            raise NotFound(f"pod sandbox {sandbox_id!r} not found")
        return self.pod


TAGGED = "docker.io/library/busybox:latest"
REPO_DIGEST = "docker.io/library/busybox@sha256:" + "cd" * 32


@dataclass
class Images:
    image: Image

    def get(self, ref: str) -> Image | None:
        return self.image if ref == TAGGED else None

    def digested_ref(self, image_id: str, name: str = "") -> str:
        return REPO_DIGEST if image_id == self.image.id and name == TAGGED else image_id


@dataclass
class StandInRuntime:
    containers: ContainerManager
    sandboxes: Sandboxes
    images: Images


class Servicer(*ContainerMixins):  # type: ignore[misc]
    """The container half of RuntimeService."""


def captured_request(pod: Pod, tmp_path: Path) -> api_pb2.CreateContainerRequest:
    shared = shared_dir()
    if shared is None or not (shared / CAPTURE).exists():
        pytest.skip("the shared captures are not available")
    request = api_pb2.CreateContainerRequest.FromString((shared / CAPTURE).read_bytes())
    request.pod_sandbox_id = pod.sandbox.id
    for mount in request.config.mounts:
        mount.host_path = str(tmp_path / Path(mount.host_path).name)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "file").write_text("hello-ro\n")
    return request


async def test_container_rpcs(env: Env, pod: Pod, tmp_path: Path) -> None:
    mgr = env.manager()
    await mgr.recover()
    svc: Any = Servicer(StandInRuntime(mgr, Sandboxes(pod.sandbox), Images(IMAGE)))
    request = await asyncio.to_thread(captured_request, pod, tmp_path)

    cid = (await svc.CreateContainer(request, None)).container_id
    await svc.StartContainer(api_pb2.StartContainerRequest(container_id=cid), None)
    with pytest.raises(FailedPrecondition):
        await svc.StartContainer(api_pb2.StartContainerRequest(container_id=cid), None)

    running = api_pb2.ContainerFilter(state=api_pb2.ContainerStateValue(
        state=api_pb2.CONTAINER_RUNNING), label_selector={"ctr": "main"})
    listed = await svc.ListContainers(api_pb2.ListContainersRequest(filter=running), None)
    assert [c.id for c in listed.containers] == [cid]
    assert listed.containers[0].metadata.name == "cap-ctr"
    assert listed.containers[0].pod_sandbox_id == pod.sandbox.id
    exited = api_pb2.ContainerFilter(state=api_pb2.ContainerStateValue(
        state=api_pb2.CONTAINER_EXITED))
    assert not (await svc.ListContainers(api_pb2.ListContainersRequest(filter=exited),
                                         None)).containers

    exec_req = api_pb2.ExecSyncRequest(container_id=cid, cmd=[
        "sh", "-c", "echo out-$FOO; echo err >&2; cat /etc/cap-ro/file; exit 3"], timeout=10)
    result = await svc.ExecSync(exec_req, None)
    assert (result.stdout, result.stderr, result.exit_code) == (b"out-bar\nhello-ro\n", b"err\n", 3)
    caps = await svc.ExecSync(api_pb2.ExecSyncRequest(
        container_id=cid, cmd=["grep", "CapEff", "/proc/self/status"]), None)
    effective = int(caps.stdout.split()[1], 16)
    assert effective & (1 << 12) and not effective & (1 << 27)  # +NET_ADMIN, -MKNOD

    await svc.UpdateContainerResources(api_pb2.UpdateContainerResourcesRequest(
        container_id=cid, linux=api_pb2.LinuxContainerResources(
            cpu_period=100000, cpu_quota=20000, memory_limit_in_bytes=128 << 20,
            hugepage_limits=[api_pb2.HugepageLimit(page_size="2MB", limit=0)])), None)

    status = (await svc.ContainerStatus(api_pb2.ContainerStatusRequest(
        container_id=cid, verbose=True), None))
    st = status.status
    assert st.state == api_pb2.CONTAINER_RUNNING
    assert st.image.image == "docker.io/library/busybox:latest" and st.image_ref == REPO_DIGEST
    assert st.image_id == IMAGE.id
    assert st.log_path == f"{pod.sandbox.spec.log_directory}/cap-ctr/0.log"
    assert st.resources.linux.memory_limit_in_bytes == 128 << 20
    assert [m.container_path for m in st.mounts] == ["/data", "/etc/cap-ro"]
    assert st.labels["app"] == "capture" and "info" in status.info

    await svc.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=10), None)
    st = (await svc.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid), None)).status
    assert (st.state, st.exit_code, st.reason) == (api_pb2.CONTAINER_EXITED, 0, "Completed")
    assert st.finished_at >= st.started_at >= st.created_at > 0
    log = await asyncio.to_thread(Path(st.log_path).read_text)
    assert " stdout F started" in log and " stderr F to-stderr" in log and "got-TERM" in log

    await svc.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), None)
    await svc.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), None)
    await svc.StopContainer(api_pb2.StopContainerRequest(container_id=cid), None)
    with pytest.raises(NotFound):
        await svc.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid), None)
    with pytest.raises(NotFound):
        await svc.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=["true"]), None)


async def test_create_errors(env: Env, pod: Pod, tmp_path: Path) -> None:
    mgr = env.manager()
    await mgr.recover()
    svc: Any = Servicer(StandInRuntime(mgr, Sandboxes(pod.sandbox), Images(IMAGE)))
    request = await asyncio.to_thread(captured_request, pod, tmp_path)
    unknown_pod = api_pb2.CreateContainerRequest()
    unknown_pod.CopyFrom(request)
    unknown_pod.pod_sandbox_id = "0" * 64
    with pytest.raises(NotFound, match="pod sandbox"):
        await svc.CreateContainer(unknown_pod, None)
    unknown_image = api_pb2.CreateContainerRequest()
    unknown_image.CopyFrom(request)
    unknown_image.config.image.image = "nope:latest"
    with pytest.raises(NotFound, match="image"):
        await svc.CreateContainer(unknown_image, None)
    bad_group = api_pb2.CreateContainerRequest()
    bad_group.CopyFrom(request)
    sc = bad_group.config.linux.security_context
    sc.ClearField("run_as_user")
    sc.run_as_group.value = 5
    with pytest.raises(InvalidArgument, match="run_as_group"):
        await svc.CreateContainer(bad_group, None)
    first = await svc.CreateContainer(request, None)
    with pytest.raises(AlreadyExists):
        await svc.CreateContainer(request, None)
    await svc.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=first.container_id),
                              None)
    with pytest.raises(NotFound):
        await svc.StartContainer(api_pb2.StartContainerRequest(container_id="0" * 64), None)
    assert mgr.list_containers() == []
