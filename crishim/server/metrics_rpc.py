"""ListMetricDescriptors and ListPodSandboxMetrics: the cAdvisor-style series kubelet serves from CRI.

Label keys follow CRI-O's and containerd's choice (id, name, image; network series add interface), so
dashboards written against `/metrics/cadvisor` keep working. Values are whole units, as the CRI Metric
carries a uint64: seconds for CPU time, bytes for memory and traffic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase
from crishim.stats import CgroupStats, ContainerSample, InterfaceCounters, PodSample

BASE_LABELS = ("id", "name", "image")
NETWORK_LABELS = (*BASE_LABELS, "interface")


@dataclass(frozen=True)
class _Series:
    name: str
    help: str
    kind: api_pb2.MetricType
    value: Callable[[CgroupStats], int | None]


_CGROUP_SERIES = (
    _Series("container_cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds.",
            api_pb2.COUNTER,
            lambda s: s.cpu_usage_ns // 1_000_000_000 if s.cpu_usage_ns is not None else None),
    _Series("container_memory_usage_bytes",
            "Current memory usage in bytes, including all memory regardless of when it was accessed.",
            api_pb2.GAUGE, lambda s: s.memory_usage),
    _Series("container_memory_working_set_bytes", "Current working set in bytes.", api_pb2.GAUGE,
            lambda s: s.memory_working_set),
    _Series("container_memory_rss", "Size of RSS in bytes.", api_pb2.GAUGE, lambda s: s.memory_rss),
    _Series("container_memory_swap", "Container swap usage in bytes.", api_pb2.GAUGE,
            lambda s: s.swap_usage),
    _Series("container_spec_memory_limit_bytes", "Memory limit for the container.", api_pb2.GAUGE,
            lambda s: s.memory_limit),
    _Series("container_processes", "Number of processes running inside the container.", api_pb2.GAUGE,
            lambda s: s.processes),
)
_NETWORK_SERIES: tuple[tuple[str, str, Callable[[InterfaceCounters], int]], ...] = (
    ("container_network_receive_bytes_total", "Cumulative count of bytes received.",
     lambda c: c.rx_bytes),
    ("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving.",
     lambda c: c.rx_errors),
    ("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.",
     lambda c: c.tx_bytes),
    ("container_network_transmit_errors_total",
     "Cumulative count of errors encountered while transmitting.", lambda c: c.tx_errors),
)
_FS_USAGE = ("container_fs_usage_bytes", "Number of bytes that are consumed by the container on this "
             "filesystem.")
_FS_INODES = ("container_fs_inodes_total", "Number of inodes used by the container's writable layer.")

DESCRIPTORS = [
    *(api_pb2.MetricDescriptor(name=s.name, help=s.help, label_keys=BASE_LABELS) for s in _CGROUP_SERIES),
    *(api_pb2.MetricDescriptor(name=name, help=text, label_keys=NETWORK_LABELS)
      for name, text, _ in _NETWORK_SERIES),
    *(api_pb2.MetricDescriptor(name=name, help=text, label_keys=BASE_LABELS)
      for name, text in (_FS_USAGE, _FS_INODES)),
]


def _cgroup_metrics(stats: CgroupStats | None, labels: list[str]) -> list[api_pb2.Metric]:
    if stats is None:
        return []
    found = []
    for series in _CGROUP_SERIES:
        value = series.value(stats)
        if value is not None:
            found.append(api_pb2.Metric(name=series.name, timestamp=stats.timestamp, metric_type=series.kind,
                                        label_values=labels, value=api_pb2.UInt64Value(value=value)))
    return found


def _container_metrics(sample: ContainerSample) -> api_pb2.ContainerMetrics:
    c = sample.container
    labels = [c.id, c.spec.name, c.spec.image]
    metrics = _cgroup_metrics(sample.cgroup, labels)
    layer = sample.writable_layer
    if layer is not None:
        for (name, _), value in ((_FS_USAGE, layer.used_bytes), (_FS_INODES, layer.inodes_used)):
            metrics.append(api_pb2.Metric(name=name, timestamp=layer.timestamp, metric_type=api_pb2.GAUGE,
                                          label_values=labels, value=api_pb2.UInt64Value(value=value)))
    return api_pb2.ContainerMetrics(container_id=c.id, metrics=metrics)


def pod_metrics(sample: PodSample) -> api_pb2.PodSandboxMetrics:
    sandbox = sample.sandbox
    labels = [sandbox.id, sandbox.spec.name, ""]
    metrics = _cgroup_metrics(sample.cgroup, labels)
    for counters in sample.interfaces:
        for name, _, value in _NETWORK_SERIES:
            metrics.append(api_pb2.Metric(
                name=name, timestamp=sample.timestamp, metric_type=api_pb2.COUNTER,
                label_values=[*labels, counters.name], value=api_pb2.UInt64Value(value=value(counters))))
    return api_pb2.PodSandboxMetrics(pod_sandbox_id=sandbox.id, metrics=metrics,
                                     container_metrics=[_container_metrics(c) for c in sample.containers])


class MetricsMixin(ServicerBase):
    async def ListMetricDescriptors(self, request: api_pb2.ListMetricDescriptorsRequest,
                                    context: Any) -> api_pb2.ListMetricDescriptorsResponse:
        return api_pb2.ListMetricDescriptorsResponse(descriptors=DESCRIPTORS)

    async def ListPodSandboxMetrics(self, request: api_pb2.ListPodSandboxMetricsRequest,
                                    context: Any) -> api_pb2.ListPodSandboxMetricsResponse:
        samples = await asyncio.gather(*(self.runtime.stats.pod(s) for s in self.runtime.sandboxes.list()))
        return api_pb2.ListPodSandboxMetricsResponse(pod_metrics=[pod_metrics(s) for s in samples])
