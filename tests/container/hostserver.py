"""A real `crishim serve` for container tests that need its image manager but no pod network: their pods
use the machine's network namespace (hostNetwork), so images come straight from the session registry on
the machine's loopback and no test node is needed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crishim.api.runtime.v1 import api_pb2
from tests.harness import CrishimServer, remove_root
from tests.sandbox.podutil import pod_config


@contextlib.contextmanager
def host_server(root: Path, **extra: Any) -> Iterator[CrishimServer]:
    server = CrishimServer(root=root, node=None, extra_config=extra)
    try:
        server.start()
        yield server
    finally:
        server.remove_all_pods()
        server.stop()
        remove_root(server.root)


def pull(server: CrishimServer, ref: str) -> str:
    return str(server.images().PullImage(
        api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=60).image_ref)


def host_pod(server: CrishimServer, name: str, handler: str = "") -> tuple[str, api_pb2.PodSandboxConfig]:
    config = pod_config(name, host_network=True)
    pod_id = server.runtime().RunPodSandbox(api_pb2.RunPodSandboxRequest(
        config=config, runtime_handler=handler)).pod_sandbox_id
    return str(pod_id), config


def container_config(name: str, image: str, mounts: list[api_pb2.Mount]) -> api_pb2.ContainerConfig:
    """A long-running container of `image` (busybox) with `mounts`, named as kubelet would."""
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name), image=api_pb2.ImageSpec(image=image),
        command=["sleep", "600"], mounts=mounts)


def create(server: CrishimServer, pod: tuple[str, api_pb2.PodSandboxConfig],
           config: api_pb2.ContainerConfig) -> str:
    pod_id, pod_config_ = pod
    return str(server.runtime().CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config_)).container_id)


def start(server: CrishimServer, container_id: str) -> None:
    server.runtime().StartContainer(api_pb2.StartContainerRequest(container_id=container_id))


def exec_sync(server: CrishimServer, container_id: str, *cmd: str) -> api_pb2.ExecSyncResponse:
    return server.runtime().ExecSync(api_pb2.ExecSyncRequest(container_id=container_id, cmd=list(cmd),
                                                             timeout=10))


def status(server: CrishimServer, container_id: str) -> api_pb2.ContainerStatus:
    return server.runtime().ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=container_id)).status


def remove(server: CrishimServer, container_id: str) -> None:
    rt = server.runtime()
    rt.StopContainer(api_pb2.StopContainerRequest(container_id=container_id, timeout=0))
    rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))
