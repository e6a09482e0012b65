"""Checks on a container spec before anything is created, with messages that name the field.

What passes here can be given to conmon (its argv), to the OCI runtime (config.json) and to the
container's execve, and its log stays inside the pod's log directory: a container can only fail later for
reasons of the node or the image, never of the request.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
from pathlib import Path

from crishim import limits
from crishim.container.model import ContainerSpec, Mount, Resources
from crishim.container.ocispec import PROPAGATION_OPTION
from crishim.errors import InvalidArgument
from crishim.limits import shown


def validate_container(spec: ContainerSpec, log_directory: str, rro_supported: bool) -> None:
    limits.check_name("config.metadata.name", spec.name)
    if spec.log_path:
        # Relative and without '..': conmon, as root, writes the log wherever it points.
        limits.check_relative_path("config.log_path", spec.log_path)
        if log_directory:
            limits.check_size("config.log_path (in the pod's log_directory)",
                              os.path.join(log_directory, spec.log_path), limits.PATH_MAX_BYTES)
    if spec.working_dir:
        limits.check_size("config.working_dir", spec.working_dir, limits.PATH_MAX_BYTES)
        if not spec.working_dir.startswith("/"):
            raise InvalidArgument(f"config.working_dir {shown(spec.working_dir)} must be an absolute path")
    for i, mount in enumerate(spec.mounts):
        _validate_mount(f"config.mounts[{i}]", mount, rro_supported)
    _validate_process(spec)


def _validate_mount(field: str, mount: Mount, rro_supported: bool) -> None:
    """An image volume has no host_path yet: crishim mounts the image and fills it in."""
    limits.check_size(f"{field}.host_path", mount.host_path, limits.PATH_MAX_BYTES)
    limits.check_absolute_path(f"{field}.container_path", mount.container_path)
    if not posixpath.normpath(mount.container_path).strip("/"):  # "/", "//." …
        raise InvalidArgument(f"{field}.container_path: nothing may be mounted over the container's root")
    where = f"{field} (container_path {shown(mount.container_path)})"
    if mount.image:
        if not mount.readonly:
            raise InvalidArgument(f"{where}: an image volume must be readonly")
    elif mount.image_sub_path:
        raise InvalidArgument(f"{where}: image_sub_path is only for an image volume (image is empty)")
    if not mount.host_path.startswith("/") and not (mount.image and not mount.host_path):
        raise InvalidArgument(f"{field}.host_path {shown(mount.host_path)} must be absolute")
    if mount.propagation not in PROPAGATION_OPTION:
        raise InvalidArgument(f"{where}: unknown propagation {mount.propagation!r}")
    if mount.recursive_read_only:
        if not mount.readonly:
            raise InvalidArgument(f"{where}: recursive_read_only needs readonly")
        if mount.propagation != "private":
            raise InvalidArgument(f"{where}: recursive_read_only needs private propagation, not "
                                  f"{mount.propagation!r}")
        if not rro_supported:
            raise InvalidArgument(f"{where}: the pod's runtime handler does not support recursive "
                                  "read-only mounts (RROUnsupported)")


def _validate_process(spec: ContainerSpec) -> None:
    """What the container's execve gets: each string and all of them below the kernel's limits."""
    total = 0
    strings = [(f"config.command[{i}]", v) for i, v in enumerate(spec.command)]
    strings += [(f"config.args[{i}]", v) for i, v in enumerate(spec.args)]
    strings += [(f"config.envs[{i}]", f"{key}={value}") for i, (key, value) in enumerate(spec.envs)]
    for field, value in strings:
        limits.check_size(field, value, limits.ARG_MAX_BYTES)
        total += limits.size(value) + 1
    if total > limits.ARGV_MAX_BYTES:
        raise InvalidArgument(f"config.command, args and envs are {total} bytes together; at most "
                              f"{limits.ARGV_MAX_BYTES} are allowed")


# The kernel's bounds (cgroup v1 cpu and memory controllers, /proc/PID/oom_score_adj). A value outside
# them fails only in `runc create`; a memory limit below what runc's own init needs (CRI-O's floor)
# likewise.
CPU_PERIOD_RANGE = (1_000, 1_000_000)  # µs
CPU_QUOTA_MIN = 1_000  # µs; -1 is "no limit"
CPU_SHARES_RANGE = (2, 262_144)
MEMORY_LIMIT_MIN = 12 * 1024 * 1024
OOM_SCORE_ADJ_RANGE = (-1000, 1000)
_CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def validate_resources(res: Resources, field: str) -> None:
    """Limits the kernel takes; an unset (zero) value leaves the default."""
    def within(name: str, value: int, low: int, high: int, unset: tuple[int, ...] = (0,)) -> None:
        if value not in unset and not low <= value <= high:
            raise InvalidArgument(f"{field}.{name} {value} is outside {low}..{high}"
                                  + "".join(f" (or {u})" for u in unset))

    within("cpu_period", res.cpu_period, *CPU_PERIOD_RANGE)
    within("cpu_quota", res.cpu_quota, CPU_QUOTA_MIN, 2**62, unset=(0, -1))
    within("cpu_shares", res.cpu_shares, *CPU_SHARES_RANGE)
    within("memory_limit_in_bytes", res.memory_limit_in_bytes, MEMORY_LIMIT_MIN, 2**62)
    within("memory_swap_limit_in_bytes", res.memory_swap_limit_in_bytes,
           max(res.memory_limit_in_bytes, MEMORY_LIMIT_MIN), 2**62, unset=(0, -1))
    if res.memory_swap_limit_in_bytes > 0 and not res.memory_limit_in_bytes:
        raise InvalidArgument(f"{field}.memory_swap_limit_in_bytes needs memory_limit_in_bytes")
    within("oom_score_adj", res.oom_score_adj, *OOM_SCORE_ADJ_RANGE)
    for name, value, online in (("cpuset_cpus", res.cpuset_cpus, "/sys/devices/system/cpu/online"),
                                ("cpuset_mems", res.cpuset_mems, "/sys/devices/system/node/online")):
        if value and not _cpu_list(value) <= _online(online):
            raise InvalidArgument(f"{field}.{name} {shown(value)} is not a list of this node's online "
                                  f"{'CPUs' if name == 'cpuset_cpus' else 'memory nodes'}")


def _cpu_list(text: str) -> set[int]:
    """ "0-2,5" -> {0, 1, 2, 5}; {-1}, which no node has, for text that is no such list."""
    if not _CPU_LIST.match(text) or len(text) > limits.VALUE_MAX_BYTES:
        return {-1}
    found: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if last < first or last > 65_535:
            return {-1}
        found.update(range(first, last + 1))
    return found


@functools.cache
def _online(path: str) -> set[int]:
    """The CPUs or memory nodes the kernel lists as online (read once)."""
    return _cpu_list(Path(path).read_text().strip())
