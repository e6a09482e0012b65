"""Container and pod statistics: cgroups, processes, writable layers and pod network counters."""

from crishim.stats.cgroups import BlkioDevice, CgroupReader, CgroupStats, Hugetlb, Pressure, cgroup_of
from crishim.stats.collector import ContainerSample, ContainerSource, PodSample, StatsCollector
from crishim.stats.fsusage import FsUsage, dir_usage
from crishim.stats.netdev import InterfaceCounters, read_pod_interfaces
from crishim.stats.procs import ProcessStats, read_processes

__all__ = [
    "BlkioDevice",
    "CgroupReader",
    "CgroupStats",
    "ContainerSample",
    "ContainerSource",
    "FsUsage",
    "Hugetlb",
    "InterfaceCounters",
    "PodSample",
    "Pressure",
    "ProcessStats",
    "StatsCollector",
    "cgroup_of",
    "dir_usage",
    "read_pod_interfaces",
    "read_processes",
]
