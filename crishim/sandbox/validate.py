"""Checks on a pod spec before anything is created, with messages that name the field."""

from __future__ import annotations

import re

from crishim.errors import InvalidArgument
from crishim.sandbox.model import SandboxSpec

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
