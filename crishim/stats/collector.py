"""Sample containers and pods: the domain side of the stats and metrics RPCs (no protobuf here)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from crishim.container.model import Container
from crishim.sandbox.model import Sandbox, SandboxState
from crishim.stats.cgroups import CgroupReader, CgroupStats, cgroup_of
from crishim.stats.cpu import CpuRates
from crishim.stats.fsusage import FsUsage, dir_usage
from crishim.stats.netdev import InterfaceCounters, read_pod_interfaces

log = logging.getLogger(__name__)

# The image manager puts a container's overlay upper dir here, inside the container's directory.
UPPER_DIR = "upper"


class ContainerSource(Protocol):
    """The part of the container manager the collector reads."""

    def get(self, container_id: str) -> Container | None: ...

    def containers_of(self, sandbox_id: str) -> list[Container]: ...


@dataclass(frozen=True)
class ContainerSample:
    container: Container
    cgroup: CgroupStats | None  # None when the container has no running process
    cpu_nano_cores: int | None
    writable_layer: FsUsage | None


@dataclass(frozen=True)
class PodSample:
    sandbox: Sandbox
    timestamp: int
    cgroup: CgroupStats | None
    cpu_nano_cores: int | None
    interfaces: list[InterfaceCounters] = field(default_factory=list)
    containers: list[ContainerSample] = field(default_factory=list)


def _sum(samples: list[CgroupStats]) -> CgroupStats | None:
    """A pod without its own cgroup: add up its containers' figures (limits are not additive)."""
    if not samples:
        return None

    def total(name: str) -> int | None:
        values = [getattr(s, name) for s in samples if getattr(s, name) is not None]
        return sum(values) if values else None

    return CgroupStats(
        timestamp=max(s.timestamp for s in samples), cpu_usage_ns=total("cpu_usage_ns"),
        memory_usage=total("memory_usage"), memory_working_set=total("memory_working_set"),
        memory_rss=total("memory_rss"), page_faults=total("page_faults"),
        major_page_faults=total("major_page_faults"), swap_usage=total("swap_usage"),
        processes=total("processes"))


class StatsCollector:
    def __init__(self, containers: ContainerSource | None = None,
                 reader: CgroupReader | None = None) -> None:
        self.containers = containers
        self.reader = reader or CgroupReader.detect()
        self._rates = CpuRates()

    def _rate(self, key: str, stats: CgroupStats | None) -> int | None:
        if stats is None or stats.cpu_usage_ns is None:
            return None
        return self._rates.update(key, stats.timestamp, stats.cpu_usage_ns)

    def _read_container(self, c: Container) -> tuple[CgroupStats | None, FsUsage | None]:
        stats = None
        if c.pid > 0:
            path = cgroup_of(c.pid, self.reader)
            stats = self.reader.read(path) if path is not None else None
        return stats, dir_usage(str(Path(c.dir) / UPPER_DIR))

    async def container(self, c: Container) -> ContainerSample:
        stats, layer = await asyncio.to_thread(self._read_container, c)
        return ContainerSample(container=c, cgroup=stats, cpu_nano_cores=self._rate(c.id, stats),
                               writable_layer=layer)

    async def containers_sample(self, containers: list[Container]) -> list[ContainerSample]:
        return list(await asyncio.gather(*(self.container(c) for c in containers)))

    async def pod(self, sandbox: Sandbox) -> PodSample:
        members = self.containers.containers_of(sandbox.id) if self.containers else []
        samples = await self.containers_sample(members)
        parent = sandbox.spec.cgroup_parent
        own = await asyncio.to_thread(self.reader.read, parent) if parent else None
        stats = own or _sum([s.cgroup for s in samples if s.cgroup is not None])
        interfaces: list[InterfaceCounters] = []
        if sandbox.netns_path and sandbox.state == SandboxState.READY:
            with contextlib.suppress(OSError):  # the pod's namespace went away while we looked
                interfaces = await read_pod_interfaces(sandbox.netns_path)
        return PodSample(sandbox=sandbox, timestamp=time.time_ns(), cgroup=stats,
                         cpu_nano_cores=self._rate(f"pod/{sandbox.id}", stats), interfaces=interfaces,
                         containers=samples)
