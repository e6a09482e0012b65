"""Read CPU, memory and process figures of one cgroup, from cgroup v1 hierarchies or a cgroup v2 tree.

On hybrid hosts (v1 controllers plus an almost empty cgroup2 mount) the v1 files are authoritative. Every
reader tolerates missing files: a controller that is not enabled leaves its figures as None rather than
failing the whole sample, and a cgroup that vanished mid-read (container exiting) gives None.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# v1 reports "no limit" as a page-aligned LONG_MAX; anything this large is not a real limit.
_NO_LIMIT = 1 << 60


@dataclass(frozen=True)
class CgroupStats:
    timestamp: int  # ns since the epoch
    cpu_usage_ns: int | None = None
    memory_usage: int | None = None
    memory_working_set: int | None = None
    memory_rss: int | None = None
    memory_limit: int | None = None  # None when unlimited
    page_faults: int | None = None
    major_page_faults: int | None = None
    swap_usage: int | None = None
    swap_limit: int | None = None
    processes: int | None = None

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
    """A "key value" per line file (memory.stat, cpu.stat)."""
    found: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            found[key] = int(value)
    return found


def _limit(value: int | None) -> int | None:
    return value if value is not None and value < _NO_LIMIT else None


def _working_set(usage: int | None, inactive_file: int | None) -> int | None:
    """What kubelet evicts on: usage minus the page cache the kernel can drop first."""
    if usage is None:
        return None
    return usage - inactive_file if inactive_file is not None and inactive_file < usage else usage


def _count_procs(directory: Path) -> int | None:
    """Processes in `directory` and every cgroup below it (cgroup.procs is not hierarchical)."""
    if not directory.is_dir():
        return None
    total = 0
    for dirpath, _, files in os.walk(directory):
        if "cgroup.procs" in files:
            total += len((_read(Path(dirpath) / "cgroup.procs") or "").split())
    return total


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

    def read(self, relative: str) -> CgroupStats | None:
        """Sample the cgroup at `relative` (as in /proc/PID/cgroup); None when it does not exist."""
        if not self.exists(relative):
            return None
        return self._read_v2(relative) if self.unified else self._read_v1(relative)

    def _read_v1(self, relative: str) -> CgroupStats:
        now = time.time_ns()
        cpu = _int(self._dir("cpuacct", relative) / "cpuacct.usage")
        mem = self._dir("memory", relative)
        stat = _keyed(mem / "memory.stat")
        usage = _int(mem / "memory.usage_in_bytes")
        memsw = _int(mem / "memory.memsw.usage_in_bytes")
        pids = _int(self._dir("pids", relative) / "pids.current")
        return CgroupStats(
            timestamp=now,
            cpu_usage_ns=cpu,
            memory_usage=usage,
            memory_working_set=_working_set(usage, stat.get("total_inactive_file")),
            memory_rss=stat.get("total_rss"),
            memory_limit=_limit(_int(mem / "memory.limit_in_bytes")),
            page_faults=stat.get("total_pgfault"),
            major_page_faults=stat.get("total_pgmajfault"),
            # Two files read at different instants: the difference can dip below zero.
            swap_usage=max(memsw - usage, 0) if memsw is not None and usage is not None else None,
            swap_limit=_limit(_int(mem / "memory.memsw.limit_in_bytes")),
            processes=pids if pids is not None else _count_procs(self._dir("cpuacct", relative)),
        )

    def _read_v2(self, relative: str) -> CgroupStats:
        now = time.time_ns()
        directory = self._dir("cpu", relative)
        cpu = _keyed(directory / "cpu.stat").get("usage_usec")
        stat = _keyed(directory / "memory.stat")
        usage = _int(directory / "memory.current")
        pids = _int(directory / "pids.current")
        return CgroupStats(
            timestamp=now,
            cpu_usage_ns=cpu * 1000 if cpu is not None else None,
            memory_usage=usage,
            memory_working_set=_working_set(usage, stat.get("inactive_file")),
            memory_rss=stat.get("anon"),
            memory_limit=_limit(_int(directory / "memory.max")),
            page_faults=stat.get("pgfault"),
            major_page_faults=stat.get("pgmajfault"),
            swap_usage=_int(directory / "memory.swap.current"),
            swap_limit=_limit(_int(directory / "memory.swap.max")),
            processes=pids if pids is not None else _count_procs(directory),
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
