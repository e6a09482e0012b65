"""A CRI v1 client (grpc.aio over the crishim.api stubs) and kubelet's GetPodStatus on top of it."""

from __future__ import annotations

import asyncio
from types import TracebackType

import grpc

from crishim.api.runtime.v1 import api_pb2, api_pb2_grpc
from crishim.kubelet.actions import (
    CREATED,
    EXITED,
    RUNNING,
    UNKNOWN,
    ContainerSnapshot,
    PodSnapshot,
    SandboxSnapshot,
)
from crishim.kubelet.requests import POD_NAME_LABEL, POD_NAMESPACE_LABEL, POD_UID_LABEL, RESTART_COUNT

# kubelet's --runtime-request-timeout default: every CRI call but PullImage gets this deadline.
REQUEST_TIMEOUT = 120.0
PULL_TIMEOUT = 1800.0

STATES = {api_pb2.CONTAINER_RUNNING: RUNNING, api_pb2.CONTAINER_EXITED: EXITED,
          api_pb2.CONTAINER_CREATED: CREATED, api_pb2.CONTAINER_UNKNOWN: UNKNOWN}


def grpc_target(endpoint: str) -> str:
    """`unix:///run/x.sock`, `unix:/run/x.sock` or a bare socket path, as grpc's target string."""
    if endpoint.startswith("unix://"):
        return f"unix:{endpoint[len('unix://'):]}"
    if endpoint.startswith("unix:"):
        return endpoint
    return f"unix:{endpoint}"


def not_found(exc: grpc.RpcError) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.NOT_FOUND


class Cri:
    """The two CRI services on one channel."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.channel = grpc.aio.insecure_channel(grpc_target(endpoint))
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> Cri:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.channel.close(None)

    async def find_sandboxes(self, name: str, namespace: str) -> list[api_pb2.PodSandbox]:
        """Sandboxes carrying kubelet's pod labels, newest first."""
        selector = {POD_NAME_LABEL: name, POD_NAMESPACE_LABEL: namespace}
        response = await self.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(
            filter=api_pb2.PodSandboxFilter(label_selector=selector)), timeout=REQUEST_TIMEOUT)
        return sorted(response.items, key=lambda s: s.created_at, reverse=True)

    async def pod_status(self, uid: str) -> PodSnapshot:
        """kuberuntime_manager.go GetPodStatus: ListPodSandbox({uid}) + PodSandboxStatus each, then
        ListContainers({uid}) + ContainerStatus each; something gone between list and status is skipped."""
        selector = {POD_UID_LABEL: uid}
        listed = await self.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(
            filter=api_pb2.PodSandboxFilter(label_selector=selector)), timeout=REQUEST_TIMEOUT)
        sandboxes = []
        for item in sorted(listed.items, key=lambda s: s.created_at, reverse=True):
            try:
                status = (await self.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
                    pod_sandbox_id=item.id), timeout=REQUEST_TIMEOUT)).status
            except grpc.aio.AioRpcError as exc:
                if not_found(exc):
                    continue
                raise
            sandboxes.append(SandboxSnapshot(
                id=status.id, ready=status.state == api_pb2.SANDBOX_READY, attempt=status.metadata.attempt,
                created_at=status.created_at, ip=status.network.ip,
                host_network=status.linux.namespaces.options.network == api_pb2.NODE))
        containers = await self.runtime.ListContainers(api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(label_selector=selector)), timeout=REQUEST_TIMEOUT)
        snapshots = []
        for item in containers.containers:
            try:
                c = (await self.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(
                    container_id=item.id), timeout=REQUEST_TIMEOUT)).status
            except grpc.aio.AioRpcError as exc:
                if not_found(exc):
                    continue
                raise
            restarts = c.annotations.get(RESTART_COUNT, "")
            snapshots.append(ContainerSnapshot(
                id=c.id, name=c.metadata.name, state=STATES.get(c.state, UNKNOWN),
                restart_count=int(restarts) if restarts.isdigit() else c.metadata.attempt,
                created_at=c.created_at, started_at=c.started_at, finished_at=c.finished_at,
                exit_code=c.exit_code, reason=c.reason, sandbox_id=item.pod_sandbox_id))
        snapshots.sort(key=lambda s: s.created_at, reverse=True)
        return PodSnapshot(sandboxes=tuple(sandboxes), containers=tuple(snapshots))

    async def wait_ready(self, within: float) -> None:
        """Version until it answers, so a runner started beside its runtime waits for the socket."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            try:
                await self.runtime.Version(api_pb2.VersionRequest(), timeout=2)
                return
            except grpc.aio.AioRpcError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)
