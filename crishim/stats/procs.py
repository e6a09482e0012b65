"""Open files and sockets of a cgroup's processes, and the soft limits of its root process, from /proc.

Like cAdvisor: descriptors and sockets are counted over every process of the cgroup, ulimits are read
from the root process only, and only the open files limit is reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# /proc/PID/limits row name -> the `ulimit` label value cAdvisor gives it.
ULIMITS = {"Max open files": "max_open_files"}


@dataclass(frozen=True)
class ProcessStats:
    file_descriptors: int
    sockets: int
    ulimits_soft: dict[str, int] = field(default_factory=dict)  # unlimited ones left out


def _descriptors(pid: int) -> tuple[int, int]:
    """(descriptors, sockets) of one process; (0, 0) once it is gone."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return 0, 0
    sockets = 0
    for name in names:
        try:
            sockets += os.readlink(f"{fd_dir}/{name}").startswith("socket:")
        except OSError:
            continue
    return len(names), sockets


def parse_limits(text: str) -> dict[str, int]:
    """Soft limits from /proc/PID/limits (`Max open files  1024  4096  files`), by cAdvisor name."""
    found = {}
    for line in text.splitlines():
        for row, name in ULIMITS.items():
            if line.startswith(row):
                soft = line[len(row):].split()[0]
                if soft.isdigit():
                    found[name] = int(soft)
    return found


def read_processes(pids: list[int], root_pid: int) -> ProcessStats:
    """Blocking: walks /proc, call it off the event loop. `root_pid` 0: no ulimits."""
    fds = sockets = 0
    for pid in pids:
        count, socks = _descriptors(pid)
        fds += count
        sockets += socks
    limits: dict[str, int] = {}
    if root_pid > 0:
        try:
            with open(f"/proc/{root_pid}/limits") as f:
                limits = parse_limits(f.read())
        except OSError:
            pass
    return ProcessStats(file_descriptors=fds, sockets=sockets, ulimits_soft=limits)
