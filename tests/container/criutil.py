"""Containers through a real `crishim serve` in a test node, with the busybox image pulled from the
node's registry: the `cri` fixture (it needs `node_registry`, from tests/image_fixtures.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from crishim.api.runtime.v1 import api_pb2
from crishim.container.ocispec import ALL_CAPABILITIES, held_capabilities
from tests.harness import CrishimServer
from tests.sandbox.podutil import pod_config, run_pod
from tests.test_e2e import container_config, exec_sync, start_container

__all__ = ["Cri", "cri"]


@dataclass
class Cri:
    server: CrishimServer
    image: str

    def pod(self, name: str, privileged: bool = False) -> tuple[str, api_pb2.PodSandboxConfig]:
        config = pod_config(name)
        config.linux.security_context.privileged = privileged
        # As kubelet sends it without shareProcessNamespace: PID 1 is the container's own process.
        config.linux.security_context.namespace_options.pid = api_pb2.CONTAINER
        return run_pod(self.server, config), config

    def container(self, pod: tuple[str, api_pb2.PodSandboxConfig], name: str,
                  security: api_pb2.LinuxContainerSecurityContext | None = None,
                  mounts: list[api_pb2.Mount] | None = None) -> str:
        config = container_config(name, self.image, "sleep", "600", mounts=mounts or [])
        if security is not None:
            config.linux.security_context.CopyFrom(security)
        config.linux.security_context.namespace_options.pid = api_pb2.CONTAINER
        return start_container(self.server, pod[0], pod[1], config)

    def sh(self, container_id: str, script: str) -> api_pb2.ExecSyncResponse:
        return exec_sync(self.server, container_id, "sh", "-c", script)

    def status_field(self, container_id: str, field: str, path: str = "/proc/1/status") -> int:
        """A hexadecimal field (CapEff, CapBnd...) of a process status inside the container."""
        out = self.sh(container_id, f"grep '^{field}:' {path}").stdout.decode()
        return int(out.split()[1], 16)

    def crishim_holds(self) -> int:
        """The capabilities crishim itself can grant, as a mask."""
        assert self.server.proc is not None
        held = held_capabilities(Path(f"/proc/{self.server.proc.pid}/status").read_text())
        return sum(1 << ALL_CAPABILITIES.index(name) for name in held)


@pytest.fixture
def cri(server_factory: Callable[..., CrishimServer], node_registry: str, busybox_image: str) -> Cri:
    server = server_factory()
    server.images().PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=busybox_image)))
    return Cri(server, busybox_image)
