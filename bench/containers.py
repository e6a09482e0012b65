"""Container rows: CreateContainer + StartContainer of a busybox `sleep 3600` through crishim's socket,
each in a READY pod of its own, against the same bundle run by conmon + runc directly (bench.ctrfloor).

The image is built from busybox-static with umoci (as the tests build it) and imported into crishim's
store with `crishim images import` before the server starts: the server runs in the test node and could
not reach a registry on the host's loopback. The floor's overlay lower dir is umoci's unpacked copy of the
same single layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import drive
from bench.rpc import Cycle, channel, runtime_stub
from crishim.api.runtime.v1 import api_pb2
from tests.harness import REPO, poll, run
from tests.image_fixtures import build_busybox_layout, layout_image

IMAGE_REF = "bench.local/busybox:1"
COMMAND = ("sleep", "3600")
CONTAINER_CONCURRENCY = 1
STOP_WAIT = 30.0
STEPS = ("create", "start", "create_start", "stop", "remove", "stop_remove")
RUNC = "/usr/bin/runc"


def own_pid_namespace() -> api_pb2.NamespaceOption:
    """kubelet's default (no shareProcessNamespace); CRI's zero value would mean a pod-wide one."""
    return api_pb2.NamespaceOption(pid=api_pb2.CONTAINER)


def container_config(name: str) -> api_pb2.ContainerConfig:
    """What both sides run: the floor translates it with crishim's own `spec_from_config`."""
    config = api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name=name),
                                     image=api_pb2.ImageSpec(image=IMAGE_REF), command=list(COMMAND))
    config.linux.security_context.namespace_options.CopyFrom(own_pid_namespace())
    return config


def pod_config(tag: str, index: int, cgroup_top: str) -> api_pb2.PodSandboxConfig:
    name = f"{tag}-{index}"
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace="bench", uid=name),
        linux=api_pb2.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent(cgroup_top, name)))
    config.linux.security_context.namespace_options.CopyFrom(own_pid_namespace())
    return config


def cgroup_parent(top: str, name: str) -> str:
    return f"{top}/{name}"


@dataclass(frozen=True)
class BenchImage:
    archive: Path  # OCI archive for `crishim images import`
    lower: Path  # the layer as umoci unpacked it: the floor's overlay lower dir
    config: dict[str, Any]  # the image config (Env, Cmd) crishim reads from its store


def build_image(work: Path) -> BenchImage:
    layout = build_busybox_layout(work)
    archive = work / "busybox-oci.tar"
    run(["skopeo", "copy", "--quiet", f"oci:{layout}:1", f"oci-archive:{archive}:{IMAGE_REF}"])
    _, spec, _ = layout_image(layout, "1")
    return BenchImage(archive=archive, lower=work / "bundle" / "rootfs", config=spec["config"])


def import_image(config_path: Path, archive: Path) -> None:
    """Blocking; must run before the server starts, since a running server holds the image store."""
    done = run([sys.executable, "-m", "crishim", "--config", str(config_path), "images", "import",
                str(archive)], check=False, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"crishim images import failed ({done.returncode}):\n{done.stderr}")


@dataclass
class ContainerCycle(Cycle):
    """One round through crishim: pods (untimed), then each container's create+start, stop+remove."""

    pods: list[tuple[str, api_pb2.PodSandboxConfig]] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)

    async def run_pod(self, config: api_pb2.PodSandboxConfig) -> None:
        response = await self.call("pod_run", self.rt.RunPodSandbox,
                                   api_pb2.RunPodSandboxRequest(config=config))
        if response is not None:
            self.pods.append((response.pod_sandbox_id, config))

    async def create_start(self, pod: tuple[str, api_pb2.PodSandboxConfig]) -> None:
        pod_id, config = pod
        t0 = time.perf_counter()
        created = await self.call("create", self.rt.CreateContainer, api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=container_config(config.metadata.name), sandbox_config=config))
        if created is None:
            return
        self.containers.append(created.container_id)
        started = await self.call("start", self.rt.StartContainer,
                                  api_pb2.StartContainerRequest(container_id=created.container_id))
        if started is not None:
            self.samples["create_start"].append(time.perf_counter() - t0)

    async def stop_remove(self, container_id: str) -> None:
        t0 = time.perf_counter()
        stopped = await self.call("stop", self.rt.StopContainer,
                                  api_pb2.StopContainerRequest(container_id=container_id, timeout=0))
        removed = await self.call("remove", self.rt.RemoveContainer,
                                  api_pb2.RemoveContainerRequest(container_id=container_id))
        if stopped is not None and removed is not None:
            self.samples["stop_remove"].append(time.perf_counter() - t0)

    async def pods_down(self) -> None:
        """Untimed; removing a pod also removes whatever container a failed step left in it."""
        for pod_id, _ in self.pods:
            await self.call("pod_stop", self.rt.StopPodSandbox,
                            api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
            await self.call("pod_remove", self.rt.RemovePodSandbox,
                            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


async def crishim_round(socket: str, count: int, tag: str, cgroup_top: str) -> dict[str, Any]:
    configs = [pod_config(tag, i, cgroup_top) for i in range(count)]
    async with channel(socket) as ch:
        cycle = ContainerCycle(runtime_stub(ch))
        try:
            await drive(configs, CONTAINER_CONCURRENCY, cycle.run_pod)
            create_wall = await drive(list(cycle.pods), CONTAINER_CONCURRENCY, cycle.create_start)
            delete_wall = await drive(list(cycle.containers), CONTAINER_CONCURRENCY, cycle.stop_remove)
        finally:
            await asyncio.shield(cycle.pods_down())
    return {"samples": {step: cycle.samples[step] for step in STEPS}, "count": len(cycle.containers),
            "create_wall_s": create_wall, "delete_wall_s": delete_wall, "errors": cycle.errors}


def sweep(runtime_roots: list[Path], root: Path, cgroup_top: str) -> None:
    """Blocking, best effort, for the way out: delete what a failed run left in the runtimes' state
    (which kills the container, so its conmon exits), then the cgroup parents runc never removes."""
    for state in runtime_roots:
        if not state.is_dir():
            continue
        listed = run([RUNC, "--root", str(state), "list", "-q"], check=False).stdout.split()
        for cid in listed:
            run([RUNC, "--root", str(state), "delete", "--force", cid], check=False)
    with contextlib.suppress(AssertionError):
        poll(lambda: not processes_below(root), timeout=STOP_WAIT, what="conmon processes to exit")
    remove_cgroups(cgroup_top)


def processes_below(root: Path) -> list[int]:
    """Processes (conmon, containers' runtimes) started with a path under `root` on their command line."""
    found = []
    marker = str(root).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if marker in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


def cgroups_left(top: str) -> list[Path]:
    return [p for p in Path("/sys/fs/cgroup").glob(f"*/{top.lstrip('/')}") if p.is_dir()]


def remove_cgroups(top: str) -> None:
    """The pods' cgroup parents (their owner, kubelet, would remove them), deepest first."""
    for tree in cgroups_left(top):
        for path in sorted((p for p in tree.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                path.rmdir()
        with contextlib.suppress(OSError):
            tree.rmdir()

