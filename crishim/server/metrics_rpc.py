"""ListMetricDescriptors and ListPodSandboxMetrics: the cAdvisor series kubelet serves from CRI.

`SERIES` is the one table: each row names a series as cAdvisor does (name, help text, counter or gauge,
label keys after the base ones) and says where its values come from; descriptors and values are both
derived from it, so a value's labels always line up with its descriptor's keys. The base label keys are
CRI-O's and containerd's choice (id, name, image), so dashboards written against `/metrics/cadvisor` keep
working. Values are whole units, as the CRI Metric carries a uint64: seconds for times, bytes for sizes;
cAdvisor's "unlimited" spec values read 0 and its -1 ulimits are left out.

Pressure (PSI) is read from the cgroup2 mount even on hybrid hosts, whose v1 hierarchies have no pressure
files. What this node cannot give: hugetlb usage appears only where the container's cgroup has the hugetlb
controller (a v1 hugetlb hierarchy, or cgroup2 with the controller enabled); on hybrid hosts whose cgroup2
mount does not enable it below its root (the development machines) those series stay described but
empty. cgroup2 keeps no hugetlb peak, so container_hugetlb_max_usage_bytes is v1 only. The blkio-based
series (container_fs_reads_*, container_fs_writes_*, container_blkio_device_usage_total) count I/O that
reached a block device only. The CFS throttling series and container_spec_cpu_quota appear, as in
cAdvisor, only for cgroups with a CFS quota.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.server.base import ServicerBase
from crishim.stats import (
    BlkioDevice,
    CgroupStats,
    ContainerSample,
    FsUsage,
    Hugetlb,
    InterfaceCounters,
    PodSample,
    ProcessStats,
)

BASE_LABELS = ("id", "name", "image")
SECOND = 1_000_000_000
MICROS = 1_000_000


@dataclass(frozen=True)
class Subject:
    """What one pod or container offers the series; absent parts give no values."""

    labels: tuple[str, ...]  # values of BASE_LABELS
    timestamp: int  # ns since the epoch, when the figures were read
    started_at: int  # ns since the epoch
    cgroup: CgroupStats | None
    processes: ProcessStats | None = None
    layer: FsUsage | None = None
    interfaces: Sequence[InterfaceCounters] = ()


Values = Iterable[tuple[tuple[str, ...], int]]  # (values of the extra label keys, value)


@dataclass(frozen=True)
class Series:
    name: str
    help: str
    kind: api_pb2.MetricType
    extra_labels: tuple[str, ...]
    values: Callable[[Subject], Values]

    def descriptor(self) -> api_pb2.MetricDescriptor:
        return api_pb2.MetricDescriptor(name=self.name, help=self.help,
                                        label_keys=[*BASE_LABELS, *self.extra_labels])


def _cgroup(get: Callable[[CgroupStats], int | None], unit: int = 1) -> Callable[[Subject], Values]:
    def values(s: Subject) -> Values:
        value = get(s.cgroup) if s.cgroup is not None else None
        return [((), value // unit)] if value is not None else []
    return values


def _setting(get: Callable[[CgroupStats], int | None], unlimited: int | None = None
             ) -> Callable[[Subject], Values]:
    """A cgroup setting; None ("no limit") reads `unlimited` where cAdvisor gives it a value. Figures
    added up over a pod's containers have no settings."""
    def values(s: Subject) -> Values:
        if s.cgroup is None or s.cgroup.summed:
            return []
        value = get(s.cgroup)
        value = unlimited if value is None else value
        return [((), value)] if value is not None else []
    return values


def _with_quota(get: Callable[[CgroupStats], int | None], unit: int = 1) -> Callable[[Subject], Values]:
    """cAdvisor reports CFS figures only for cgroups that have a quota."""
    return _cgroup(lambda c: get(c) if c.cpu_quota_us is not None else None, unit)


def _pressure(resource: str, full: bool) -> Callable[[Subject], Values]:
    def get(c: CgroupStats) -> int | None:
        p = c.pressure.get(resource)
        return None if p is None else p.full_us if full else p.some_us
    return _cgroup(get, MICROS)


def _memory_failures(s: Subject) -> Values:
    c = s.cgroup
    if c is None:
        return []
    found = ((("pgfault", "container"), c.page_faults_local),
             (("pgmajfault", "container"), c.major_page_faults_local),
             (("pgfault", "hierarchy"), c.page_faults), (("pgmajfault", "hierarchy"), c.major_page_faults))
    return [(labels, value) for labels, value in found if value is not None]


def _hugetlb(get: Callable[[Hugetlb], int | None]) -> Callable[[Subject], Values]:
    def values(s: Subject) -> Values:
        pages = s.cgroup.hugetlb if s.cgroup is not None else {}
        return [((size,), v) for size, h in sorted(pages.items()) if (v := get(h)) is not None]
    return values


def _blkio(get: Callable[[BlkioDevice], int]) -> Callable[[Subject], Values]:
    return lambda s: [((d.device,), get(d)) for d in (s.cgroup.blkio if s.cgroup is not None else [])]


def _blkio_usage(s: Subject) -> Values:
    return [((d.device, str(d.major), str(d.minor), op), value)
            for d in (s.cgroup.blkio if s.cgroup is not None else [])
            for op, value in (("Read", d.read_bytes), ("Write", d.write_bytes))]


def _processes(get: Callable[[ProcessStats], int]) -> Callable[[Subject], Values]:
    return lambda s: [((), get(s.processes))] if s.processes is not None else []


def _ulimits(s: Subject) -> Values:
    return sorted(((name,), v) for name, v in s.processes.ulimits_soft.items()) if s.processes else []


def _layer(get: Callable[[FsUsage], int]) -> Callable[[Subject], Values]:
    return lambda s: [((s.layer.device,), get(s.layer))] if s.layer is not None else []


def _interfaces(get: Callable[[InterfaceCounters], int]) -> Callable[[Subject], Values]:
    return lambda s: [((i.name,), get(i)) for i in s.interfaces]


C, G = api_pb2.COUNTER, api_pb2.GAUGE
DEV, IFACE = ("device",), ("interface",)

SERIES: tuple[Series, ...] = (
    Series("container_last_seen", "Last time a container was seen by the exporter", G, (),
           lambda s: [((), s.timestamp // SECOND)]),
    Series("container_start_time_seconds", "Start time of the container since unix epoch in seconds.", G,
           (), lambda s: [((), s.started_at // SECOND)] if s.started_at else []),
    # CPU
    Series("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", C, ("cpu",),
           lambda s: [(("total",), v) for _, v in _cgroup(lambda c: c.cpu_usage_ns, SECOND)(s)]),
    Series("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.", C, (),
           _cgroup(lambda c: c.cpu_user_ns, SECOND)),
    Series("container_cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds.", C, (),
           _cgroup(lambda c: c.cpu_system_ns, SECOND)),
    Series("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", C, (),
           _with_quota(lambda c: c.cfs_periods)),
    Series("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", C, (),
           _with_quota(lambda c: c.cfs_throttled_periods)),
    Series("container_cpu_cfs_throttled_seconds_total",
           "Total time duration the container has been throttled.", C, (),
           _with_quota(lambda c: c.cfs_throttled_ns, SECOND)),
    Series("container_spec_cpu_period", "CPU period of the container.", G, (),
           _setting(lambda c: c.cpu_period_us)),
    Series("container_spec_cpu_quota", "CPU quota of the container.", G, (),
           _setting(lambda c: c.cpu_quota_us)),
    Series("container_spec_cpu_shares", "CPU share of the container.", G, (),
           _setting(lambda c: c.cpu_shares)),
    # Memory
    Series("container_memory_usage_bytes",
           "Current memory usage in bytes, including all memory regardless of when it was accessed", G, (),
           _cgroup(lambda c: c.memory_usage)),
    Series("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes", G, (),
           _cgroup(lambda c: c.memory_max_usage)),
    Series("container_memory_working_set_bytes", "Current working set in bytes.", G, (),
           _cgroup(lambda c: c.memory_working_set)),
    Series("container_memory_rss", "Size of RSS in bytes.", G, (), _cgroup(lambda c: c.memory_rss)),
    Series("container_memory_cache", "Number of bytes of page cache memory.", G, (),
           _cgroup(lambda c: c.memory_cache)),
    Series("container_memory_mapped_file", "Size of memory mapped files in bytes.", G, (),
           _cgroup(lambda c: c.memory_mapped_file)),
    Series("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.", G, (),
           _cgroup(lambda c: c.memory_kernel)),
    Series("container_memory_swap", "Container swap usage in bytes.", G, (), _cgroup(lambda c: c.swap_usage)),
    Series("container_memory_failcnt", "Number of memory usage hits limits", C, (),
           _cgroup(lambda c: c.memory_failcnt)),
    Series("container_memory_failures_total", "Cumulative count of memory allocation failures.", C,
           ("failure_type", "scope"), _memory_failures),
    Series("container_oom_events_total", "Count of out of memory events observed for the container", C, (),
           _cgroup(lambda c: c.oom_kills)),
    Series("container_spec_memory_limit_bytes", "Memory limit for the container.", G, (),
           _setting(lambda c: c.memory_limit, unlimited=0)),
    Series("container_spec_memory_reservation_limit_bytes", "Memory reservation limit for the container.", G,
           (), _setting(lambda c: c.memory_reservation, unlimited=0)),
    Series("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container.", G, (),
           _setting(lambda c: c.swap_limit, unlimited=0)),
    Series("container_hugetlb_usage_bytes", "Current hugepage usage in bytes", G, ("pagesize",),
           _hugetlb(lambda h: h.usage)),
    Series("container_hugetlb_max_usage_bytes", "Maximum hugepage usage recorded in bytes", G, ("pagesize",),
           _hugetlb(lambda h: h.max_usage)),
    # Pressure stall information
    Series("container_pressure_cpu_stalled_seconds_total",
           "Total time duration no tasks in the container could make progress due to CPU congestion.", C, (),
           _pressure("cpu", full=True)),
    Series("container_pressure_cpu_waiting_seconds_total",
           "Total time duration tasks in the container have waited due to CPU congestion.", C, (),
           _pressure("cpu", full=False)),
    Series("container_pressure_memory_stalled_seconds_total",
           "Total time duration no tasks in the container could make progress due to memory congestion.", C,
           (), _pressure("memory", full=True)),
    Series("container_pressure_memory_waiting_seconds_total",
           "Total time duration tasks in the container have waited due to memory congestion.", C, (),
           _pressure("memory", full=False)),
    Series("container_pressure_io_stalled_seconds_total",
           "Total time duration no tasks in the container could make progress due to IO congestion.", C, (),
           _pressure("io", full=True)),
    Series("container_pressure_io_waiting_seconds_total",
           "Total time duration tasks in the container have waited due to IO congestion.", C, (),
           _pressure("io", full=False)),
    # Processes
    Series("container_processes", "Number of processes running inside the container.", G, (),
           _cgroup(lambda c: c.processes)),
    Series("container_threads", "Number of threads running inside the container", G, (),
           _cgroup(lambda c: c.threads)),
    Series("container_threads_max",
           "Maximum number of threads allowed inside the container, infinity if value is zero", G, (),
           _setting(lambda c: c.threads_max, unlimited=0)),
    Series("container_file_descriptors", "Number of open file descriptors for the container.", G, (),
           _processes(lambda p: p.file_descriptors)),
    Series("container_sockets", "Number of open sockets for the container.", G, (),
           _processes(lambda p: p.sockets)),
    Series("container_ulimits_soft",
           "Soft ulimit values for the container root process. Unlimited if -1, except priority and nice", G,
           ("ulimit",), _ulimits),
    # Filesystem: the writable layer and the filesystem it lives on
    Series("container_fs_usage_bytes",
           "Number of bytes that are consumed by the container on this filesystem.", G, DEV,
           _layer(lambda f: f.used_bytes)),
    Series("container_fs_limit_bytes",
           "Number of bytes that can be consumed by the container on this filesystem.", G, DEV,
           _layer(lambda f: f.capacity_bytes)),
    Series("container_fs_inodes_total", "Number of Inodes", G, DEV, _layer(lambda f: f.inodes_total)),
    Series("container_fs_inodes_free", "Number of available Inodes", G, DEV, _layer(lambda f: f.inodes_free)),
    # Block I/O
    Series("container_fs_reads_bytes_total", "Cumulative count of bytes read", C, DEV,
           _blkio(lambda d: d.read_bytes)),
    Series("container_fs_reads_total", "Cumulative count of reads completed", C, DEV,
           _blkio(lambda d: d.reads)),
    Series("container_fs_writes_bytes_total", "Cumulative count of bytes written", C, DEV,
           _blkio(lambda d: d.write_bytes)),
    Series("container_fs_writes_total", "Cumulative count of writes completed", C, DEV,
           _blkio(lambda d: d.writes)),
    Series("container_blkio_device_usage_total", "Blkio Device bytes usage", C,
           ("device", "major", "minor", "operation"), _blkio_usage),
    # Network: the pod's namespace
    Series("container_network_receive_bytes_total", "Cumulative count of bytes received", C, IFACE,
           _interfaces(lambda i: i.rx_bytes)),
    Series("container_network_receive_packets_total", "Cumulative count of packets received", C, IFACE,
           _interfaces(lambda i: i.rx_packets)),
    Series("container_network_receive_packets_dropped_total",
           "Cumulative count of packets dropped while receiving", C, IFACE,
           _interfaces(lambda i: i.rx_dropped)),
    Series("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving",
           C, IFACE, _interfaces(lambda i: i.rx_errors)),
    Series("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted", C, IFACE,
           _interfaces(lambda i: i.tx_bytes)),
    Series("container_network_transmit_packets_total", "Cumulative count of packets transmitted", C, IFACE,
           _interfaces(lambda i: i.tx_packets)),
    Series("container_network_transmit_packets_dropped_total",
           "Cumulative count of packets dropped while transmitting", C, IFACE,
           _interfaces(lambda i: i.tx_dropped)),
    Series("container_network_transmit_errors_total",
           "Cumulative count of errors encountered while transmitting", C, IFACE,
           _interfaces(lambda i: i.tx_errors)),
)

DESCRIPTORS = [series.descriptor() for series in SERIES]


def metrics_of(subject: Subject) -> list[api_pb2.Metric]:
    return [api_pb2.Metric(name=series.name, timestamp=subject.timestamp, metric_type=series.kind,
                           label_values=[*subject.labels, *extra], value=api_pb2.UInt64Value(value=value))
            for series in SERIES for extra, value in series.values(subject)]


def _container_subject(sample: ContainerSample, now: int) -> Subject:
    c = sample.container
    return Subject(labels=(c.id, c.spec.name, c.spec.image),
                   timestamp=sample.cgroup.timestamp if sample.cgroup is not None else now,
                   started_at=c.started_at or c.created_at, cgroup=sample.cgroup,
                   processes=sample.processes, layer=sample.writable_layer)


def pod_metrics(sample: PodSample) -> api_pb2.PodSandboxMetrics:
    sandbox = sample.sandbox
    pod = Subject(labels=(sandbox.id, sandbox.spec.name, ""), timestamp=sample.timestamp,
                  started_at=sandbox.created_at, cgroup=sample.cgroup, processes=sample.processes,
                  interfaces=sample.interfaces)
    return api_pb2.PodSandboxMetrics(
        pod_sandbox_id=sandbox.id, metrics=metrics_of(pod),
        container_metrics=[api_pb2.ContainerMetrics(
            container_id=c.container.id, metrics=metrics_of(_container_subject(c, sample.timestamp)))
            for c in sample.containers])


class MetricsMixin(ServicerBase):
    async def ListMetricDescriptors(self, request: api_pb2.ListMetricDescriptorsRequest,
                                    context: Any) -> api_pb2.ListMetricDescriptorsResponse:
        return api_pb2.ListMetricDescriptorsResponse(descriptors=DESCRIPTORS)

    async def ListPodSandboxMetrics(self, request: api_pb2.ListPodSandboxMetricsRequest,
                                    context: Any) -> api_pb2.ListPodSandboxMetricsResponse:
        samples = await asyncio.gather(*(self.runtime.stats.pod(s) for s in self.runtime.sandboxes.list()))
        return api_pb2.ListPodSandboxMetricsResponse(pod_metrics=[pod_metrics(s) for s in samples])
