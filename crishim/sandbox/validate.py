"""Checks on a pod spec before anything is created, with messages that name the field."""

from __future__ import annotations

import re

from crishim.errors import InvalidArgument
from crishim.sandbox.model import IDMapping, NamespaceMode, SandboxSpec, UserNamespaceSpec

USERNS_FIELD = "namespace_options.userns_options"
_ID_LIMIT = 2**32 - 1  # (uid_t)-1 is no id
_MAX_MAP_LINES = 340  # the kernel's limit on uid_map / gid_map lines
# Namespaces a pod's own user namespace cannot cover: the host's are owned by the host's user namespace.
_HOST_NAMESPACES = {"network": "network_mode", "pid": "pid_mode", "ipc": "ipc_mode"}

# Values end up in CNI_ARGS (";" and "=" separate entries) and in file names.
_ARG_SAFE = re.compile(r"^[^;=\s]+$")
_HOSTNAME = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,61}[a-zA-Z0-9])?$")
_NET_SYSCTL_PREFIX = "net."


def validate_spec(spec: SandboxSpec, known_handlers: set[str]) -> None:
    for field_name in ("name", "namespace", "uid"):
        value = getattr(spec, field_name)
        if not value:
            raise InvalidArgument(f"config.metadata.{field_name} is required")
        if not _ARG_SAFE.match(value):
            raise InvalidArgument(
                f"config.metadata.{field_name} {value!r} must not contain ';', '=' or white space")
    if spec.attempt < 0:
        raise InvalidArgument("config.metadata.attempt must not be negative")
    if spec.hostname and not _HOSTNAME.fullmatch(spec.hostname):
        raise InvalidArgument(f"config.hostname {spec.hostname!r} is not a valid host name")
    if spec.runtime_handler and spec.runtime_handler not in known_handlers:
        raise InvalidArgument(
            f"runtime_handler {spec.runtime_handler!r} is not configured "
            f"(known: {', '.join(sorted(known_handlers))})")
    for mapping in spec.port_mappings:
        if mapping.protocol not in ("tcp", "udp", "sctp"):
            raise InvalidArgument(f"port mapping protocol {mapping.protocol!r} is not tcp, udp or sctp")
        if not 0 <= mapping.host_port <= 65535 or not 0 < mapping.container_port <= 65535:
            raise InvalidArgument(
                f"port mapping {mapping.host_port}->{mapping.container_port} is out of range")
    for key in spec.sysctls:
        if spec.host_network and key.startswith(_NET_SYSCTL_PREFIX):
            raise InvalidArgument(f"sysctl {key} is not allowed for a host-network pod")
        if not re.match(r"^[a-z0-9_]+(\.[a-zA-Z0-9_-]+)+$", key):
            raise InvalidArgument(f"sysctl name {key!r} is not valid")
    validate_userns(spec)


def validate_userns(spec: SandboxSpec) -> None:
    """containerd's rules (and critest's): POD needs exactly one uid and one gid mapping that maps
    container id 0; NODE takes no mappings; CONTAINER and TARGET mean nothing for a user namespace.
    A pod with its own user namespace cannot use the host's network, PID or IPC namespace."""
    userns = spec.userns
    if userns is None:
        return
    if userns.mode == NamespaceMode.NODE:
        if userns.uids or userns.gids:
            raise InvalidArgument(f"{USERNS_FIELD}: mode NODE takes no uids or gids mappings "
                                  f"(got {len(userns.uids)} and {len(userns.gids)})")
        return
    if userns.mode != NamespaceMode.POD:
        raise InvalidArgument(f"{USERNS_FIELD}.mode {userns.mode} is not supported (only POD and NODE)")
    for kind, mappings in (("uids", userns.uids), ("gids", userns.gids)):
        _check_mappings(f"{USERNS_FIELD}.{kind}", mappings)
    for name, attr in _HOST_NAMESPACES.items():
        if getattr(spec, attr) == NamespaceMode.NODE:
            raise InvalidArgument(f"{USERNS_FIELD}: mode POD cannot be combined with the host's {name} "
                                  f"namespace (namespace_options.{name} NODE)")


def _check_mappings(where: str, mappings: list[IDMapping]) -> None:
    if len(mappings) != 1:
        raise InvalidArgument(f"{where}: mode POD needs exactly one mapping, got {len(mappings)}")
    if mappings[0].container_id != 0:
        raise InvalidArgument(f"{where}: the mapping must start at container id 0, not "
                              f"{mappings[0].container_id}")
    check_idmappings(where, mappings)


def check_idmappings(where: str, mappings: list[IDMapping]) -> None:
    """What the kernel takes in a uid_map / gid_map."""
    if not mappings:
        raise InvalidArgument(f"{where}: no mapping given")
    if len(mappings) > _MAX_MAP_LINES:
        raise InvalidArgument(f"{where}: at most {_MAX_MAP_LINES} mappings, got {len(mappings)}")
    for mapping in mappings:
        if mapping.length < 1:
            raise InvalidArgument(f"{where}: mapping length must be at least 1")
        for side, start in (("host", mapping.host_id), ("container", mapping.container_id)):
            if start + mapping.length > _ID_LIMIT:
                raise InvalidArgument(f"{where}: {side} ids {start}+{mapping.length} exceed {_ID_LIMIT}")


def same_userns(pod: UserNamespaceSpec | None, container: UserNamespaceSpec | None) -> bool:
    """Whether a container's userns_options agree with its pod's (an absent one follows the pod; NODE
    and absent are the same)."""
    if container is None:
        return True
    if pod is None or not pod.own:
        return not container.own
    return container == pod
