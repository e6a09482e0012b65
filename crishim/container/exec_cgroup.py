"""A cgroup of its own per exec, so that everything the exec started can be found and killed.

`runtime exec --cgroup` puts the exec'd process into a sub-cgroup of the container's cgroup before it
runs, and whatever it starts stays there: also processes that made their own process group or session
and orphans the container's init inherited, which a process-group kill or a walk of the process tree
misses. One hierarchy is enough for that: on cgroup v1 the freezer's (runc keeps the process in the
container's cgroup in every other one), on a cgroup v2 host the unified one.

Blocking functions: call them through a thread.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_HIERARCHY = CGROUP_ROOT / "freezer"


@dataclass(frozen=True)
class ExecCgroup:
    path: Path
    runtime_arg: str  # the value of `runtime exec --cgroup`


def _place(cgroups_path: str, name: str, runtime: str) -> ExecCgroup | None:
    """Where the sub-cgroup `name` below the container's cgroup goes; None without a hierarchy for it."""
    if V1_HIERARCHY.is_dir():
        # runc wants `controller:path` to use a sub-cgroup in one v1 hierarchy only (a bare path must
        # exist in all of them); crun 1.8 takes a bare path and joins it where it exists.
        parent, arg = V1_HIERARCHY, f"freezer:{name}" if runtime == "runc" else name
    elif (CGROUP_ROOT / "cgroup.controllers").exists():
        parent, arg = CGROUP_ROOT, name
    else:
        return None
    return ExecCgroup(parent / cgroups_path.strip("/") / name, arg)


def create(cgroups_path: str, name: str, runtime: str) -> ExecCgroup | None:
    """The sub-cgroup `name` below the container's cgroup; None where there is no hierarchy for it
    (or the container's cgroup is gone: it exited)."""
    cgroup = _place(cgroups_path, name, runtime)
    if cgroup is None:
        return None
    try:
        cgroup.path.mkdir()
    except FileNotFoundError:
        return None
    return cgroup


def reap(cgroups_path: str, name: str, within: float) -> None:
    """Kill what is in the exec cgroup `name` an earlier crishim left (the exec's caller died with it),
    and remove it."""
    cgroup = _place(cgroups_path, name, "")
    if cgroup is not None and cgroup.path.is_dir():
        kill_all(cgroup, within)
        remove(cgroup)


def _pids(cgroup: ExecCgroup) -> list[int]:
    """The live processes in it (a zombie has left its cgroup already)."""
    try:
        return [int(pid) for pid in (cgroup.path / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def kill_all(cgroup: ExecCgroup, within: float) -> bool:
    """SIGKILL everything in it until it is empty (a process that forked meanwhile put its child there,
    so repeat); False if something is still there after `within` seconds."""
    deadline = time.monotonic() + within
    while found := _pids(cgroup):
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def remove(cgroup: ExecCgroup) -> None:
    """Remove it if it is empty; processes an exec left running in the background keep it (the
    runtime removes it with the container's cgroup)."""
    with contextlib.suppress(OSError):
        cgroup.path.rmdir()
