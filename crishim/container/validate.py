"""Checks on a container spec before anything is created, with messages that name the field.

What passes here can be given to conmon (its argv), to the OCI runtime (config.json) and to the
container's execve, and its log stays inside the pod's log directory: a container can only fail later for
reasons of the node or the image, never of the request.
"""

from __future__ import annotations

import os

from crishim import limits
from crishim.container.model import ContainerSpec
from crishim.errors import InvalidArgument


def validate_container(spec: ContainerSpec, log_directory: str) -> None:
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
            raise InvalidArgument(f"config.working_dir {spec.working_dir!r} must be an absolute path")
    for i, mount in enumerate(spec.mounts):  # their shape is checked with the OCI spec
        limits.check_size(f"config.mounts[{i}].container_path", mount.container_path, limits.PATH_MAX_BYTES)
        limits.check_size(f"config.mounts[{i}].host_path", mount.host_path, limits.PATH_MAX_BYTES)
    _validate_process(spec)


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
