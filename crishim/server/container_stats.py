"""ContainerStats and ListContainerStats, and the sample -> message conversion the pod stats reuse."""

from __future__ import annotations

from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.container.manager import ListFilter
from crishim.errors import NotFound
from crishim.server.base import ServicerBase
from crishim.stats import CgroupStats, ContainerSample


def u64(value: int | None) -> api_pb2.UInt64Value | None:
    return api_pb2.UInt64Value(value=value) if value is not None else None


def cpu_message(stats: CgroupStats, nano_cores: int | None) -> api_pb2.CpuUsage:
    return api_pb2.CpuUsage(timestamp=stats.timestamp, usage_core_nano_seconds=u64(stats.cpu_usage_ns),
                            usage_nano_cores=u64(nano_cores))


def memory_message(stats: CgroupStats) -> api_pb2.MemoryUsage:
    return api_pb2.MemoryUsage(
        timestamp=stats.timestamp, working_set_bytes=u64(stats.memory_working_set),
        available_bytes=u64(stats.memory_available), usage_bytes=u64(stats.memory_usage),
        rss_bytes=u64(stats.memory_rss), page_faults=u64(stats.page_faults),
        major_page_faults=u64(stats.major_page_faults))


def container_stats_message(sample: ContainerSample) -> api_pb2.ContainerStats:
    c = sample.container
    message = api_pb2.ContainerStats(attributes=api_pb2.ContainerAttributes(
        id=c.id, metadata=api_pb2.ContainerMetadata(name=c.spec.name, attempt=c.spec.attempt),
        labels=c.spec.labels, annotations=c.spec.annotations))
    stats = sample.cgroup
    if stats is not None:
        message.cpu.CopyFrom(cpu_message(stats, sample.cpu_nano_cores))
        message.memory.CopyFrom(memory_message(stats))
        swap_available = (max(stats.swap_limit - stats.swap_usage, 0)
                          if stats.swap_limit is not None and stats.swap_usage is not None else None)
        message.swap.CopyFrom(api_pb2.SwapUsage(timestamp=stats.timestamp,
                                                swap_usage_bytes=u64(stats.swap_usage),
                                                swap_available_bytes=u64(swap_available)))
    layer = sample.writable_layer
    if layer is not None:
        message.writable_layer.CopyFrom(api_pb2.FilesystemUsage(
            timestamp=layer.timestamp, fs_id=api_pb2.FilesystemIdentifier(mountpoint=layer.mountpoint),
            used_bytes=u64(layer.used_bytes), inodes_used=u64(layer.inodes_used)))
    return message


def stats_filter(flt: api_pb2.ContainerStatsFilter) -> ListFilter:
    return ListFilter(id_prefix=flt.id, sandbox_id=flt.pod_sandbox_id,
                      labels=dict(flt.label_selector) or None)


class ContainerStatsMixin(ServicerBase):
    async def ContainerStats(self, request: api_pb2.ContainerStatsRequest,
                             context: Any) -> api_pb2.ContainerStatsResponse:
        container = self.runtime.containers.get(request.container_id)
        if container is None:
            raise NotFound(f"container {request.container_id!r} not found")
        sample = await self.runtime.stats.container(container)
        return api_pb2.ContainerStatsResponse(stats=container_stats_message(sample))

    async def ListContainerStats(self, request: api_pb2.ListContainerStatsRequest,
                                 context: Any) -> api_pb2.ListContainerStatsResponse:
        containers = self.runtime.containers.list_containers(stats_filter(request.filter))
        samples = await self.runtime.stats.containers_sample(containers)
        return api_pb2.ListContainerStatsResponse(stats=[container_stats_message(s) for s in samples])
