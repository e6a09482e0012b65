"""Read the figures of one cgroup (usage, limits, pressure), from cgroup v1 hierarchies or a cgroup v2 tree.

On hybrid hosts (v1 controllers plus a cgroup2 mount at /sys/fs/cgroup/unified) the v1 files are
authoritative; the cgroup2 mount only adds what v1 lacks: pressure stall information (PSI files exist on
every cgroup2 cgroup whatever its controllers) and hugetlb when that controller is enabled there. runc
joins the cgroup2 mount at the same relative path as the v1 hierarchies, so one path serves both.

Every reader tolerates missing files: a controller that is not enabled leaves its figures as None (or
empty) rather than failing the whole sample, and a cgroup that vanished mid-read (container exiting) gives
None. On the development hosts the containers' cgroup2 cgroups have no hugetlb files (the controller is
not enabled below the root of the hybrid mount), so hugetlb figures are empty there.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
HYBRID_UNIFIED = "unified"
# v1 reports "no limit" as a page-aligned LONG_MAX; anything this large is not a real limit.
_NO_LIMIT = 1 << 60
PSI_RESOURCES = ("cpu", "memory", "io")


@dataclass(frozen=True)
class Pressure:
    """Cumulative stall time (µs): `some` while at least one task waited, `full` while all did."""

    some_us: int
    full_us: int


@dataclass(frozen=True)
class Hugetlb:
    usage: int
    max_usage: int | None  # v1 only: cgroup2 keeps no peak


@dataclass(frozen=True)
class BlkioDevice:
    major: int
    minor: int
    device: str  # /dev/NAME as sysfs names the block device, else "MAJ:MIN"
    read_bytes: int = 0
    write_bytes: int = 0
    reads: int = 0
    writes: int = 0


@dataclass(frozen=True)
class CgroupStats:
    timestamp: int  # ns since the epoch
    cpu_usage_ns: int | None = None
    cpu_user_ns: int | None = None
    cpu_system_ns: int | None = None
    cfs_periods: int | None = None
    cfs_throttled_periods: int | None = None
    cfs_throttled_ns: int | None = None
    memory_usage: int | None = None
    memory_max_usage: int | None = None
    memory_working_set: int | None = None
    memory_rss: int | None = None
    memory_cache: int | None = None
    memory_mapped_file: int | None = None
    memory_kernel: int | None = None
    memory_failcnt: int | None = None
    oom_kills: int | None = None
    page_faults: int | None = None  # this cgroup and its descendants
    major_page_faults: int | None = None
    page_faults_local: int | None = None  # this cgroup's own tasks only (v1; v2 counts hierarchically)
    major_page_faults_local: int | None = None
    swap_usage: int | None = None
    processes: int | None = None
    threads: int | None = None
    # Settings, not usage: None means "no limit" (or a v1 file that is absent).
    memory_limit: int | None = None
    swap_limit: int | None = None
    memory_reservation: int | None = None
    cpu_shares: int | None = None
    cpu_quota_us: int | None = None
    cpu_period_us: int | None = None
    threads_max: int | None = None
    # Usage added up over a pod's containers (a pod without a cgroup of its own): its settings are unknown.
    summed: bool = False
    pressure: dict[str, Pressure] = field(default_factory=dict)  # "cpu" | "memory" | "io"
    hugetlb: dict[str, Hugetlb] = field(default_factory=dict)  # by page size as the kernel names it
    blkio: list[BlkioDevice] = field(default_factory=list)

    @property
    def memory_available(self) -> int | None:
        if self.memory_limit is None or self.memory_working_set is None:
            return None
        return max(self.memory_limit - self.memory_working_set, 0)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError, OSError):
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _keyed(path: Path) -> dict[str, int]:
    """A "key value" per line file (memory.stat, cpu.stat, memory.oom_control, memory.events)."""
    found: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            found[key] = int(value)
    return found


def _limit(value: int | None) -> int | None:
    return value if value is not None and value < _NO_LIMIT else None


def _positive(value: int | None) -> int | None:
    """v1 writes -1 for "no CFS quota"."""
    return value if value is not None and value > 0 else None


def _working_set(usage: int | None, inactive_file: int | None) -> int | None:
    """What kubelet evicts on: usage minus the page cache the kernel can drop first."""
    if usage is None:
        return None
    return usage - inactive_file if inactive_file is not None and inactive_file < usage else usage


def _count_ids(directory: Path, filename: str) -> int | None:
    """Ids listed in `filename` (cgroup.procs, tasks, cgroup.threads) of `directory` and every cgroup
    below it (these files are not hierarchical)."""
    if not directory.is_dir():
        return None
    total = 0
    for dirpath, _, files in os.walk(directory):
        if filename in files:
            total += len((_read(Path(dirpath) / filename) or "").split())
    return total


def _pids(directory: Path) -> list[int]:
    found: list[int] = []
    for dirpath, _, files in os.walk(directory):
        if "cgroup.procs" in files:
            found.extend(int(p) for p in (_read(Path(dirpath) / "cgroup.procs") or "").split())
    return found


def _pressure(directory: Path) -> dict[str, Pressure]:
    """PSI files: `some avg10=… total=N` and `full … total=N` lines, N in µs."""
    found = {}
    for resource in PSI_RESOURCES:
        totals: dict[str, int] = {}
        for line in (_read(directory / f"{resource}.pressure") or "").splitlines():
            kind, *fields = line.split()
            for item in fields:
                key, _, value = item.partition("=")
                if key == "total" and value.isdigit():
                    totals[kind] = int(value)
        if "some" in totals:
            found[resource] = Pressure(some_us=totals["some"], full_us=totals.get("full", 0))
    return found


def _hugetlb(directory: Path, usage_suffix: str, max_suffix: str | None) -> dict[str, Hugetlb]:
    """hugetlb.<size>.<usage_suffix> per page size (v1 usage_in_bytes, v2 current)."""
    found = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return {}
    for name in names:
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "hugetlb" and parts[2] == usage_suffix:
            usage = _int(directory / name)
            if usage is not None:
                peak = _int(directory / f"hugetlb.{parts[1]}.{max_suffix}") if max_suffix else None
                found[parts[1]] = Hugetlb(usage=usage, max_usage=peak)
    return found


def _device_name(major: int, minor: int) -> str:
    try:
        return "/dev/" + os.path.basename(os.readlink(f"/sys/dev/block/{major}:{minor}"))
    except OSError:
        return f"{major}:{minor}"


def _v1_blkio(directory: Path) -> list[BlkioDevice]:
    """blkio.throttle.* recursive files: `MAJ:MIN Read|Write|Sync|Async|Discard|Total N` lines."""
    devices: dict[tuple[int, int], dict[str, int]] = {}
    for filename, prefix in (("blkio.throttle.io_service_bytes_recursive", "bytes_"),
                             ("blkio.throttle.io_serviced_recursive", "ios_")):
        for line in (_read(directory / filename) or "").splitlines():
            fields = line.split()
            if len(fields) != 3 or ":" not in fields[0] or not fields[2].isdigit():
                continue
            major, _, minor = fields[0].partition(":")
            devices.setdefault((int(major), int(minor)), {})[prefix + fields[1]] = int(fields[2])
    return [BlkioDevice(major=major, minor=minor, device=_device_name(major, minor),
                        read_bytes=v.get("bytes_Read", 0),
                        write_bytes=v.get("bytes_Write", 0), reads=v.get("ios_Read", 0),
                        writes=v.get("ios_Write", 0))
            for (major, minor), v in sorted(devices.items())]


def _v2_blkio(directory: Path) -> list[BlkioDevice]:
    """io.stat: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N …` lines."""
    found = []
    for line in (_read(directory / "io.stat") or "").splitlines():
        device, *fields = line.split()
        major, _, minor = device.partition(":")
        values = {k: int(v) for k, _, v in (f.partition("=") for f in fields) if v.isdigit()}
        found.append(BlkioDevice(major=int(major), minor=int(minor),
                                 device=_device_name(int(major), int(minor)),
                                 read_bytes=values.get("rbytes", 0), write_bytes=values.get("wbytes", 0),
                                 reads=values.get("rios", 0), writes=values.get("wios", 0)))
    return found


def _shares_of_weight(weight: int | None) -> int | None:
    """cpu.weight (1..10000) back to v1 shares (2..262144), the conversion runc applies the other way."""
    return 2 + ((weight - 1) * 262142) // 9999 if weight is not None else None


@dataclass(frozen=True)
class CgroupReader:
    """Reads cgroups below `root`; `unified` selects the v2 layout (one tree, all controllers)."""

    root: Path = CGROUP_ROOT
    unified: bool = False

    @classmethod
    def detect(cls, root: Path = CGROUP_ROOT) -> CgroupReader:
        return cls(root=root, unified=(root / "cgroup.controllers").exists())

    def _dir(self, controller: str, relative: str) -> Path:
        base = self.root if self.unified else self.root / controller
        return base / relative.lstrip("/")

    def exists(self, relative: str) -> bool:
        return self._dir("cpuacct", relative).is_dir()

    def pids(self, relative: str) -> list[int]:
        """Every process in the cgroup and below it."""
        return _pids(self._dir("cpuacct", relative))

    def read(self, relative: str) -> CgroupStats | None:
        """Sample the cgroup at `relative` (as in /proc/PID/cgroup); None when it does not exist."""
        if not self.exists(relative):
            return None
        return self._read_v2(relative) if self.unified else self._read_v1(relative)

    def _read_v1(self, relative: str) -> CgroupStats:
        now = time.time_ns()
        acct = self._dir("cpuacct", relative)
        cpu = self._dir("cpu", relative)
        cfs = _keyed(cpu / "cpu.stat")
        mem = self._dir("memory", relative)
        stat = _keyed(mem / "memory.stat")
        usage = _int(mem / "memory.usage_in_bytes")
        memsw = _int(mem / "memory.memsw.usage_in_bytes")
        pids = self._dir("pids", relative)
        processes = _int(pids / "pids.current")
        unified = self.root / HYBRID_UNIFIED / relative.lstrip("/")
        v1_hugetlb = self._dir("hugetlb", relative)
        return CgroupStats(
            timestamp=now,
            cpu_usage_ns=_int(acct / "cpuacct.usage"),
            cpu_user_ns=_int(acct / "cpuacct.usage_user"),
            cpu_system_ns=_int(acct / "cpuacct.usage_sys"),
            cfs_periods=cfs.get("nr_periods"),
            cfs_throttled_periods=cfs.get("nr_throttled"),
            cfs_throttled_ns=cfs.get("throttled_time"),
            memory_usage=usage,
            memory_max_usage=_int(mem / "memory.max_usage_in_bytes"),
            memory_working_set=_working_set(usage, stat.get("total_inactive_file")),
            memory_rss=stat.get("total_rss"),
            memory_cache=stat.get("total_cache"),
            memory_mapped_file=stat.get("total_mapped_file"),
            memory_kernel=_int(mem / "memory.kmem.usage_in_bytes"),
            memory_failcnt=_int(mem / "memory.failcnt"),
            oom_kills=_keyed(mem / "memory.oom_control").get("oom_kill"),
            page_faults=stat.get("total_pgfault"),
            major_page_faults=stat.get("total_pgmajfault"),
            page_faults_local=stat.get("pgfault"),
            major_page_faults_local=stat.get("pgmajfault"),
            # Two files read at different instants: the difference can dip below zero.
            swap_usage=max(memsw - usage, 0) if memsw is not None and usage is not None else None,
            processes=processes if processes is not None else _count_ids(acct, "cgroup.procs"),
            threads=_count_ids(acct, "tasks"),
            memory_limit=_limit(_int(mem / "memory.limit_in_bytes")),
            swap_limit=_limit(_int(mem / "memory.memsw.limit_in_bytes")),
            memory_reservation=_limit(_int(mem / "memory.soft_limit_in_bytes")),
            cpu_shares=_int(cpu / "cpu.shares"),
            cpu_quota_us=_positive(_int(cpu / "cpu.cfs_quota_us")),
            cpu_period_us=_int(cpu / "cpu.cfs_period_us"),
            threads_max=_int(pids / "pids.max"),
            pressure=_pressure(unified),
            hugetlb=(_hugetlb(v1_hugetlb, "usage_in_bytes", "max_usage_in_bytes") if v1_hugetlb.is_dir()
                     else _hugetlb(unified, "current", None)),
            blkio=_v1_blkio(self._dir("blkio", relative)),
        )

    def _read_v2(self, relative: str) -> CgroupStats:
        now = time.time_ns()
        directory = self._dir("cpu", relative)
        cpu = _keyed(directory / "cpu.stat")
        stat = _keyed(directory / "memory.stat")
        events = _keyed(directory / "memory.events")
        usage = _int(directory / "memory.current")
        processes = _int(directory / "pids.current")
        quota, _, period = (_read(directory / "cpu.max") or "").strip().partition(" ")

        def usec(key: str) -> int | None:
            return cpu[key] * 1000 if key in cpu else None

        return CgroupStats(
            timestamp=now,
            cpu_usage_ns=usec("usage_usec"),
            cpu_user_ns=usec("user_usec"),
            cpu_system_ns=usec("system_usec"),
            cfs_periods=cpu.get("nr_periods"),
            cfs_throttled_periods=cpu.get("nr_throttled"),
            cfs_throttled_ns=usec("throttled_usec"),
            memory_usage=usage,
            memory_max_usage=_int(directory / "memory.peak"),
            memory_working_set=_working_set(usage, stat.get("inactive_file")),
            memory_rss=stat.get("anon"),
            memory_cache=stat.get("file"),
            memory_mapped_file=stat.get("file_mapped"),
            memory_kernel=stat.get("kernel"),
            memory_failcnt=events.get("max"),
            oom_kills=events.get("oom_kill"),
            page_faults=stat.get("pgfault"),
            major_page_faults=stat.get("pgmajfault"),
            page_faults_local=stat.get("pgfault"),
            major_page_faults_local=stat.get("pgmajfault"),
            swap_usage=_int(directory / "memory.swap.current"),
            processes=processes if processes is not None else _count_ids(directory, "cgroup.procs"),
            threads=_count_ids(directory, "cgroup.threads"),
            memory_limit=_limit(_int(directory / "memory.max")),
            swap_limit=_limit(_int(directory / "memory.swap.max")),
            memory_reservation=_limit(_int(directory / "memory.low")) or None,
            cpu_shares=_shares_of_weight(_int(directory / "cpu.weight")),
            cpu_quota_us=int(quota) if quota.isdigit() else None,
            cpu_period_us=int(period) if period.isdigit() else None,
            threads_max=_int(directory / "pids.max"),
            pressure=_pressure(directory),
            hugetlb=_hugetlb(directory, "current", None),
            blkio=_v2_blkio(directory),
        )


def cgroup_of(pid: int, reader: CgroupReader) -> str | None:
    """The cgroup path of `pid` in the hierarchy `reader` reads (CPU accounting's for v1)."""
    text = _read(Path(f"/proc/{pid}/cgroup"))
    if text is None:
        return None
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if reader.unified and controllers == "":
            return path
        if not reader.unified and "cpuacct" in controllers.split(","):
            return path
    return None
