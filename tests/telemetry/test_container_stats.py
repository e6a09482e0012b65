"""Stats, pod stats and pod metrics servicers over a real runc container (via the container suite's pods).

The servicers run against the real container manager and stats collector; `_Sandboxes` only hands them
the pod the container suite's fixture built, in place of the sandbox manager.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest

from crishim.api.runtime.v1 import api_pb2
from crishim.container.manager import ContainerManager
from crishim.errors import NotFound
from crishim.sandbox.model import Sandbox
from crishim.server.metrics_rpc import pod_metrics as pod_metrics_of
from crishim.server.observability import ObservabilityMixins
from crishim.stats import StatsCollector
from tests.container.ctrutil import IMAGE, Env, Pod, spec, wait_until

MiB = 1024 * 1024
# Holds 32 MiB in a shell variable, writes 1 MiB to its writable layer, then burns CPU.
BUSY = ("x=$(head -c 33554432 /dev/zero | tr '\\0' a); head -c 1048576 /dev/zero > /big; "
        "echo ready > /ready; while :; do :; done")


@dataclass
class _Sandboxes:
    sandbox: Sandbox

    def require(self, sandbox_id: str) -> Sandbox:
        if sandbox_id != self.sandbox.id:
            raise NotFound(sandbox_id)
        return self.sandbox

    def list(self) -> list[Sandbox]:
        return [self.sandbox]


@dataclass
class _Runtime:
    sandboxes: _Sandboxes
    containers: ContainerManager
    stats: StatsCollector


class Servicer(*ObservabilityMixins):  # type: ignore[misc]
    pass


def _u(value: Any) -> int:
    return int(value.value)


@pytest.mark.root
async def test_stats_of_a_busy_container_move_the_right_way(env: Env, pod: Pod) -> None:
    mgr = env.manager()
    c = await mgr.create(pod.sandbox, spec("busy", BUSY), IMAGE)
    await mgr.start(c.id)
    servicer = Servicer(_Runtime(_Sandboxes(pod.sandbox), mgr, StatsCollector(mgr)))

    async def sample() -> api_pb2.ContainerStats:
        response = await servicer.ContainerStats(api_pb2.ContainerStatsRequest(container_id=c.id), None)
        return response.stats

    async def ready() -> bool:
        stats = await sample()
        return (stats.writable_layer.used_bytes.value >= MiB
                and stats.memory.working_set_bytes.value >= 32 * MiB)

    await wait_until(ready, within=30, what="the container to allocate its memory and write its file")
    first = await sample()
    assert first.attributes.id == c.id and first.attributes.metadata.name == "busy"
    assert first.cpu.timestamp and first.memory.timestamp and first.writable_layer.timestamp

    async def busier() -> api_pb2.ContainerStats | None:
        later = await sample()
        grew = _u(later.cpu.usage_core_nano_seconds) > _u(first.cpu.usage_core_nano_seconds)
        return later if grew and later.cpu.usage_nano_cores.value > 0 else None

    later = await wait_until(busier, within=30, what="CPU usage and rate to grow")
    assert later.cpu.timestamp > first.cpu.timestamp
    assert _u(later.memory.rss_bytes) >= 32 * MiB
    assert _u(later.memory.usage_bytes) >= _u(later.memory.working_set_bytes)
    assert _u(later.memory.page_faults) > 0
    assert later.writable_layer.inodes_used.value >= 3  # upper dir, /big, /ready

    listed = await servicer.ListContainerStats(
        api_pb2.ListContainerStatsRequest(filter=api_pb2.ContainerStatsFilter(pod_sandbox_id=pod.sandbox.id)),
        None)
    assert [s.attributes.id for s in listed.stats] == [c.id]

    pod_stats = (await servicer.PodSandboxStats(
        api_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod.sandbox.id), None)).stats
    linux = pod_stats.linux
    assert pod_stats.attributes.id == pod.sandbox.id
    assert [s.attributes.id for s in linux.containers] == [c.id]
    assert _u(linux.process.process_count) >= 1
    assert _u(linux.memory.working_set_bytes) >= 32 * MiB
    assert linux.network.default_interface.name == "eth0"
    assert linux.network.timestamp > 0

    metrics = (await servicer.ListPodSandboxMetrics(api_pb2.ListPodSandboxMetricsRequest(), None)).pod_metrics
    (pod_metrics,) = metrics
    names = {m.name for m in pod_metrics.metrics}
    assert "container_network_receive_bytes_total" in names
    (container_metrics,) = pod_metrics.container_metrics
    by_name = {m.name: m for m in container_metrics.metrics}
    assert by_name["container_memory_working_set_bytes"].value.value >= 32 * MiB
    assert list(by_name["container_memory_working_set_bytes"].label_values) == [c.id, "busy", ""]
    # Seen as a pod without a cgroup of its own, the pod adds up its containers' figures.
    unparented = replace(pod.sandbox, spec=replace(pod.sandbox.spec, cgroup_parent=""))
    summed = {m.name: m for m in pod_metrics_of(await servicer.runtime.stats.pod(unparented)).metrics}
    for name in ("container_threads", "container_file_descriptors", "container_memory_cache"):
        assert summed[name].value.value >= by_name[name].value.value > 0, name
    assert "container_spec_memory_limit_bytes" not in summed  # settings do not add up
    assert "container_spec_memory_limit_bytes" in {m.name for m in pod_metrics.metrics}
    descriptors = (await servicer.ListMetricDescriptors(api_pb2.ListMetricDescriptorsRequest(), None))
    described = {d.name for d in descriptors.descriptors}
    assert names | set(by_name) <= described

    pages = [page async for page in servicer.StreamContainerStats(
        api_pb2.StreamContainerStatsRequest(), None)]
    assert [s.attributes.id for page in pages for s in page.container_stats] == [c.id]

    with pytest.raises(NotFound):
        await servicer.ContainerStats(api_pb2.ContainerStatsRequest(container_id="nope"), None)
