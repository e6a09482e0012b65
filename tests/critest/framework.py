"""The requests critest (kubernetes-sigs/cri-tools, pkg/framework/util.go) sends, with its defaults: names
with UUID suffixes (pod names longer than 63 characters), attempt 2, no labels, no log paths, an empty
Linux section and the cgroup parent common.GetCgroupParent derives from RuntimeConfig."""

from __future__ import annotations

import uuid
from typing import Any

from crishim.api.runtime.v1 import api_pb2
from tests.container import hostserver
from tests.harness import CrishimServer

UID_PREFIX = "cri-test-uid"
NAMESPACE_PREFIX = "cri-test-namespace"
ATTEMPT = 2
CONTAINER_COMMAND = ("top",)  # DefaultContainerCommand
PAUSE_COMMAND = ("sh", "-c", "top")  # DefaultPauseCommand
SYSTEMD_SLICE = "/test.slice"  # common.DefaultSystemdCgroupSlice


def new_uuid() -> str:
    return str(uuid.uuid4())


def cgroup_parent(server: CrishimServer) -> str:
    """common.GetCgroupParent: none under the cgroupfs driver, critest's own slice otherwise."""
    config = server.runtime().RuntimeConfig(api_pb2.RuntimeConfigRequest())
    return "" if config.linux.cgroup_driver == api_pb2.CGROUPFS else SYSTEMD_SLICE


def pod_metadata(name: str) -> api_pb2.PodSandboxMetadata:
    """framework.BuildPodSandboxMetadata with the uid and namespace critest makes up for each pod."""
    return api_pb2.PodSandboxMetadata(name=name, uid=UID_PREFIX + new_uuid(),
                                      namespace=NAMESPACE_PREFIX + new_uuid(), attempt=ATTEMPT)


def pod_config(server: CrishimServer, prefix: str, **fields: Any) -> api_pb2.PodSandboxConfig:
    """framework.RunDefaultPodSandbox's config (and CreatePodSandboxForContainer's), plus `fields`."""
    config = api_pb2.PodSandboxConfig(metadata=pod_metadata(prefix + new_uuid()), **fields)
    config.linux.cgroup_parent = cgroup_parent(server)
    return config


def run_pod(server: CrishimServer, config: api_pb2.PodSandboxConfig) -> str:
    """framework.RunPodSandbox: the default runtime handler ("")."""
    return str(server.runtime().RunPodSandbox(
        api_pb2.RunPodSandboxRequest(config=config)).pod_sandbox_id)


def container_config(prefix: str, image: str, command: tuple[str, ...] = CONTAINER_COMMAND,
                     **fields: Any) -> api_pb2.ContainerConfig:
    """framework.CreateDefaultContainer's config; CreateContainerWithError fills user_specified_image."""
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=prefix + new_uuid(), attempt=ATTEMPT),
        image=api_pb2.ImageSpec(image=image, user_specified_image=image), command=list(command),
        **fields)
    config.linux.SetInParent()
    return config


def create_container(server: CrishimServer, pod_id: str, pod: api_pb2.PodSandboxConfig,
                     config: api_pb2.ContainerConfig) -> str:
    return hostserver.create(server, (pod_id, pod), config)


start_container = hostserver.start


def exec_sync(server: CrishimServer, container_id: str, *cmd: str) -> api_pb2.ExecSyncResponse:
    """critest's ExecSync calls: defaultExecSyncTimeout is 60 seconds."""
    return server.runtime().ExecSync(api_pb2.ExecSyncRequest(container_id=container_id, cmd=list(cmd),
                                                             timeout=60))


def cleanup_pod(server: CrishimServer, pod_id: str) -> None:
    """framework.CleanupPodSandbox: stop, then remove; both must succeed."""
    rt = server.runtime()
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
