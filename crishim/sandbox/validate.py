"""Checks on a pod spec before anything is created, with messages that name the field.

Whatever passes here can be carried to the CNI plugins (CNI_ARGS, their stdin), written into the pod's
files and used as a path: a pod can only fail later for reasons of the node, never of the request.
"""

from __future__ import annotations

import ipaddress
import re

from crishim import limits
from crishim.errors import InvalidArgument
from crishim.limits import shown
from crishim.sandbox.model import IDMapping, NamespaceMode, SandboxSpec, UserNamespaceSpec

USERNS_FIELD = "namespace_options.userns_options"
_ID_LIMIT = 2**32 - 1  # (uid_t)-1 is no id
_MAX_MAP_LINES = 340  # the kernel's limit on uid_map / gid_map lines
# Namespaces a pod's own user namespace cannot cover: the host's are owned by the host's user namespace.
_HOST_NAMESPACES = {"network": "network_mode", "pid": "pid_mode", "ipc": "ipc_mode"}

_HOSTNAME = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,61}[a-zA-Z0-9])?$")
_SYSCTL_NAME = re.compile(r"^[a-z0-9_]+(\.[a-zA-Z0-9_-]+)+$")
# A search domain: labels of letters, digits, '-' and '_', dot-separated, an optional final dot.
_DOMAIN = re.compile(r"^(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
                     r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")
# The sysctls a pod's own namespaces isolate (as runc checks them); any other one would be the node's.
_IPC_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")
_IPC_SYSCTL_PREFIX = "fs.mqueue."
_UTS_SYSCTLS = ("kernel.domainname", "kernel.hostname")
_NET_SYSCTL_PREFIX = "net."


def validate_spec(spec: SandboxSpec, known_handlers: set[str]) -> None:
    validate_metadata(spec)
    if spec.hostname and not _HOSTNAME.fullmatch(spec.hostname):
        raise InvalidArgument(f"config.hostname {shown(spec.hostname)} is not a valid host name")
    if spec.runtime_handler and spec.runtime_handler not in known_handlers:
        raise InvalidArgument(
            f"runtime_handler {shown(spec.runtime_handler)} is not configured "
            f"(known: {', '.join(sorted(known_handlers))})")
    if spec.log_directory:
        limits.check_absolute_path("config.log_directory", spec.log_directory)
    if spec.cgroup_parent:
        limits.check_absolute_path("config.linux.cgroup_parent", spec.cgroup_parent)
    _validate_dns(spec)
    _validate_port_mappings(spec)
    _validate_sysctls(spec)
    validate_userns(spec)


def validate_metadata(spec: SandboxSpec) -> None:
    """What goes into CNI_ARGS: an attachment whose arguments pass this can be torn down."""
    for field_name in ("name", "namespace", "uid"):
        limits.check_name(f"config.metadata.{field_name}", getattr(spec, field_name))
    if spec.attempt < 0:
        raise InvalidArgument("config.metadata.attempt must not be negative")


def _validate_dns(spec: SandboxSpec) -> None:
    if spec.dns is None:
        return
    for i, server in enumerate(spec.dns.servers):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidArgument(
                f"config.dns_config.servers[{i}] {shown(server)} is not an IP address") from None
    for i, search in enumerate(spec.dns.searches):
        if not _DOMAIN.fullmatch(search):
            raise InvalidArgument(f"config.dns_config.searches[{i}] {shown(search)} is not a domain name")
    for i, option in enumerate(spec.dns.options):
        limits.check_token(f"config.dns_config.options[{i}]", option)


def _validate_port_mappings(spec: SandboxSpec) -> None:
    for i, mapping in enumerate(spec.port_mappings):
        field = f"config.port_mappings[{i}]"
        if mapping.protocol not in ("tcp", "udp", "sctp"):
            raise InvalidArgument(f"{field}.protocol {shown(mapping.protocol)} is not TCP, UDP or SCTP")
        if not 0 <= mapping.host_port <= 65535 or not 0 < mapping.container_port <= 65535:
            raise InvalidArgument(
                f"{field}: port {mapping.host_port}->{mapping.container_port} is out of range")
        if mapping.host_ip:
            try:
                ipaddress.ip_address(mapping.host_ip)
            except ValueError:
                raise InvalidArgument(
                    f"{field}.host_ip {shown(mapping.host_ip)} is not an IP address") from None


def _validate_sysctls(spec: SandboxSpec) -> None:
    for key, value in spec.sysctls.items():
        field = f"config.linux.sysctls[{shown(key)}]"
        if not _SYSCTL_NAME.match(key):
            raise InvalidArgument(f"{field}: {shown(key)} is not a sysctl name")
        if key.startswith(_NET_SYSCTL_PREFIX):
            own = not spec.host_network
        elif key in _IPC_SYSCTLS or key.startswith(_IPC_SYSCTL_PREFIX):
            own = not spec.host_ipc
        elif key in _UTS_SYSCTLS:
            own = not spec.host_network  # the UTS namespace is the pod's with its network
        else:
            raise InvalidArgument(f"{field}: {key} is not a namespaced sysctl; setting it would change "
                                  "the node")
        if not own:
            raise InvalidArgument(f"{field}: {key} would change the node: the pod shares the node's "
                                  "namespace for it")
        limits.check_line(field, value)


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
