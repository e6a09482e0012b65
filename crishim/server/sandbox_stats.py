"""PodSandboxStats and ListPodSandboxStats: the pod's cgroup, its containers and its network counters."""

from __future__ import annotations

import asyncio
from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.network.podnet import POD_IFNAME
from crishim.sandbox.model import Sandbox
from crishim.server.base import ServicerBase
from crishim.server.container_stats import container_stats_message, cpu_message, memory_message, u64
from crishim.server.sandbox_convert import to_pod_sandbox
from crishim.stats import PodSample


def pod_stats_message(sample: PodSample) -> api_pb2.PodSandboxStats:
    pod = to_pod_sandbox(sample.sandbox)
    linux = api_pb2.LinuxPodSandboxStats(
        containers=[container_stats_message(c) for c in sample.containers])
    stats = sample.cgroup
    if stats is not None:
        linux.cpu.CopyFrom(cpu_message(stats, sample.cpu_nano_cores))
        linux.memory.CopyFrom(memory_message(stats))
        linux.process.CopyFrom(api_pb2.ProcessUsage(timestamp=stats.timestamp,
                                                    process_count=u64(stats.processes)))
    if sample.interfaces:
        linux.network.timestamp = sample.timestamp
        for counters in sample.interfaces:
            usage = api_pb2.NetworkInterfaceUsage(
                name=counters.name, rx_bytes=u64(counters.rx_bytes), rx_errors=u64(counters.rx_errors),
                tx_bytes=u64(counters.tx_bytes), tx_errors=u64(counters.tx_errors))
            linux.network.interfaces.append(usage)
            if counters.name == POD_IFNAME:
                linux.network.default_interface.CopyFrom(usage)
    return api_pb2.PodSandboxStats(
        attributes=api_pb2.PodSandboxAttributes(id=pod.id, metadata=pod.metadata, labels=pod.labels,
                                                annotations=pod.annotations),
        linux=linux)


def matching_sandboxes(sandboxes: list[Sandbox], flt: api_pb2.PodSandboxStatsFilter) -> list[Sandbox]:
    return [s for s in sandboxes if s.id.startswith(flt.id)
            and all(s.spec.labels.get(k) == v for k, v in flt.label_selector.items())]


class SandboxStatsMixin(ServicerBase):
    async def PodSandboxStats(self, request: api_pb2.PodSandboxStatsRequest,
                              context: Any) -> api_pb2.PodSandboxStatsResponse:
        sandbox = self.runtime.sandboxes.require(request.pod_sandbox_id)
        sample = await self.runtime.stats.pod(sandbox)
        return api_pb2.PodSandboxStatsResponse(stats=pod_stats_message(sample))

    async def ListPodSandboxStats(self, request: api_pb2.ListPodSandboxStatsRequest,
                                  context: Any) -> api_pb2.ListPodSandboxStatsResponse:
        sandboxes = matching_sandboxes(self.runtime.sandboxes.list(), request.filter)
        samples = await asyncio.gather(*(self.runtime.stats.pod(s) for s in sandboxes))
        return api_pb2.ListPodSandboxStatsResponse(stats=[pod_stats_message(s) for s in samples])
