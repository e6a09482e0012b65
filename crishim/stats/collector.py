"""Sample containers and pods: the domain side of the stats and metrics RPCs (no protobuf here)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from crishim.container.model import Container
from crishim.sandbox.model import Sandbox, SandboxState
from crishim.stats.cgroups import CgroupReader, CgroupStats, cgroup_of
from crishim.stats.cpu import CpuRates
from crishim.stats.fsusage import FsUsage, dir_usage
from crishim.stats.netdev import InterfaceCounters, read_pod_interfaces
from crishim.stats.procs import ProcessStats, read_processes

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
    processes: ProcessStats | None = None


@dataclass(frozen=True)
class PodSample:
    sandbox: Sandbox
    timestamp: int
    cgroup: CgroupStats | None
    cpu_nano_cores: int | None
    interfaces: list[InterfaceCounters] = field(default_factory=list)
    containers: list[ContainerSample] = field(default_factory=list)
    processes: ProcessStats | None = None


# The usage figures a pod without its own cgroup adds up over its containers; limits, peaks and stall
# times are not additive and are left out.
_ADDITIVE = ("cpu_usage_ns", "cpu_user_ns", "cpu_system_ns", "memory_usage", "memory_working_set",
             "memory_rss", "memory_cache", "memory_mapped_file", "memory_kernel", "memory_failcnt",
             "oom_kills", "page_faults", "major_page_faults", "page_faults_local",
             "major_page_faults_local", "swap_usage", "processes", "threads")


def _sum(samples: list[CgroupStats]) -> CgroupStats | None:
    """A pod without its own cgroup: its containers' figures added up."""
    if not samples:
        return None

    def total(name: str) -> int | None:
        values = [getattr(s, name) for s in samples if getattr(s, name) is not None]
        return sum(values) if values else None

    totals: dict[str, Any] = {name: total(name) for name in _ADDITIVE}
    return replace(CgroupStats(timestamp=max(s.timestamp for s in samples), summed=True), **totals)


def _sum_processes(samples: list[ProcessStats]) -> ProcessStats | None:
    """Descriptors and sockets add up; ulimits belong to one root process, which such a pod lacks."""
    if not samples:
        return None
    return ProcessStats(file_descriptors=sum(p.file_descriptors for p in samples),
                        sockets=sum(p.sockets for p in samples))


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

    def _read_cgroup(self, relative: str, root_pid: int) -> tuple[CgroupStats | None, ProcessStats | None]:
        stats = self.reader.read(relative)
        if stats is None:
            return None, None
        return stats, read_processes(self.reader.pids(relative), root_pid)

    def _read_container(self, c: Container) -> tuple[CgroupStats | None, ProcessStats | None,
                                                      FsUsage | None]:
        stats = procs = None
        if c.pid > 0:
            path = cgroup_of(c.pid, self.reader)
            if path is not None:
                stats, procs = self._read_cgroup(path, c.pid)
        return stats, procs, dir_usage(str(Path(c.dir) / UPPER_DIR))

    async def container(self, c: Container) -> ContainerSample:
        stats, procs, layer = await asyncio.to_thread(self._read_container, c)
        return ContainerSample(container=c, cgroup=stats, cpu_nano_cores=self._rate(c.id, stats),
                               writable_layer=layer, processes=procs)

    async def containers_sample(self, containers: list[Container]) -> list[ContainerSample]:
        return list(await asyncio.gather(*(self.container(c) for c in containers)))

    async def pod(self, sandbox: Sandbox) -> PodSample:
        members = self.containers.containers_of(sandbox.id) if self.containers else []
        samples = await self.containers_sample(members)
        parent = sandbox.spec.cgroup_parent
        own, procs = await asyncio.to_thread(self._read_cgroup, parent, 0) if parent else (None, None)
        if own is None:
            stats = _sum([s.cgroup for s in samples if s.cgroup is not None])
            procs = _sum_processes([s.processes for s in samples if s.processes is not None])
        else:
            stats = own
        interfaces: list[InterfaceCounters] = []
        if sandbox.netns_path and sandbox.state == SandboxState.READY:
            with contextlib.suppress(OSError):  # the pod's namespace went away while we looked
                interfaces = await read_pod_interfaces(sandbox.netns_path)
        return PodSample(sandbox=sandbox, timestamp=time.time_ns(), cgroup=stats,
                         cpu_nano_cores=self._rate(f"pod/{sandbox.id}", stats), interfaces=interfaces,
                         containers=samples, processes=procs)
