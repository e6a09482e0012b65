"""Container and pod statistics: cgroups, writable layers and pod network counters."""

from crishim.stats.cgroups import CgroupReader, CgroupStats, cgroup_of
from crishim.stats.collector import ContainerSample, ContainerSource, PodSample, StatsCollector
from crishim.stats.fsusage import FsUsage, dir_usage
from crishim.stats.netdev import InterfaceCounters, read_pod_interfaces

__all__ = [
    "CgroupReader",
    "CgroupStats",
    "ContainerSample",
    "ContainerSource",
    "FsUsage",
    "InterfaceCounters",
    "PodSample",
    "StatsCollector",
    "cgroup_of",
    "dir_usage",
    "read_pod_interfaces",
]
