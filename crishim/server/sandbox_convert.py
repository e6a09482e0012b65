"""PodSandboxConfig <-> the sandbox domain objects, and Sandbox -> the CRI status messages."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.sandbox.model import (
    DNSConfig,
    IDMapping,
    NamespaceMode,
    PortMapping,
    Sandbox,
    SandboxSpec,
    SandboxState,
    UserNamespaceSpec,
)
from crishim.server.request_check import enum_name

_OPTIONS = "config.linux.security_context.namespace_options"
_PROTOCOLS = {api_pb2.TCP: "tcp", api_pb2.UDP: "udp", api_pb2.SCTP: "sctp"}
_STATES = {SandboxState.READY: api_pb2.SANDBOX_READY, SandboxState.NOTREADY: api_pb2.SANDBOX_NOTREADY,
           SandboxState.CREATING: api_pb2.SANDBOX_NOTREADY}


def spec_from_request(request: api_pb2.RunPodSandboxRequest) -> tuple[SandboxSpec, str]:
    config = request.config
    options = config.linux.security_context.namespace_options
    dns = None
    if config.HasField("dns_config"):
        dns = DNSConfig(servers=list(config.dns_config.servers), searches=list(config.dns_config.searches),
                        options=list(config.dns_config.options))
    spec = SandboxSpec(
        name=config.metadata.name,
        namespace=config.metadata.namespace,
        uid=config.metadata.uid,
        attempt=config.metadata.attempt,
        hostname=config.hostname,
        log_directory=config.log_directory,
        runtime_handler=request.runtime_handler,
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        dns=dns,
        port_mappings=[PortMapping(protocol=_PROTOCOLS.get(p.protocol, str(p.protocol)),
                                   container_port=p.container_port, host_port=p.host_port,
                                   host_ip=p.host_ip) for p in config.port_mappings],
        cgroup_parent=config.linux.cgroup_parent,
        sysctls=dict(config.linux.sysctls),
        network_mode=NamespaceMode(enum_name(api_pb2.NamespaceMode, options.network, f"{_OPTIONS}.network")),
        pid_mode=NamespaceMode(enum_name(api_pb2.NamespaceMode, options.pid, f"{_OPTIONS}.pid")),
        ipc_mode=NamespaceMode(enum_name(api_pb2.NamespaceMode, options.ipc, f"{_OPTIONS}.ipc")),
        userns=userns_from(options),
    )
    blob = base64.b64encode(config.SerializeToString(deterministic=True)).decode()
    return spec, blob


def userns_from(options: api_pb2.NamespaceOption) -> UserNamespaceSpec | None:
    """NamespaceOption.userns_options as sent (None when absent); sandbox/validate.py judges it."""
    if not options.HasField("userns_options"):
        return None
    userns = options.userns_options
    mode = enum_name(api_pb2.NamespaceMode, userns.mode, "namespace_options.userns_options.mode")
    return UserNamespaceSpec(mode=NamespaceMode(mode),
                             uids=idmappings_from(userns.uids), gids=idmappings_from(userns.gids))


def idmappings_from(items: Iterable[api_pb2.IDMapping]) -> list[IDMapping]:
    return [IDMapping(container_id=m.container_id, host_id=m.host_id, length=m.length) for m in items]


def sandbox_config(sandbox: Sandbox) -> api_pb2.PodSandboxConfig:
    """The config as the client sent it (the record keeps it serialized)."""
    return api_pb2.PodSandboxConfig.FromString(base64.b64decode(sandbox.spec.config_blob))


def _metadata(sandbox: Sandbox) -> api_pb2.PodSandboxMetadata:
    spec = sandbox.spec
    return api_pb2.PodSandboxMetadata(name=spec.name, uid=spec.uid, namespace=spec.namespace,
                                      attempt=spec.attempt)


def to_pod_sandbox(sandbox: Sandbox) -> api_pb2.PodSandbox:
    spec = sandbox.spec
    return api_pb2.PodSandbox(id=sandbox.id, metadata=_metadata(sandbox), state=_STATES[sandbox.state],
                              created_at=sandbox.created_at, labels=spec.labels,
                              annotations=spec.annotations, runtime_handler=spec.runtime_handler)


class PodSandboxCache:
    """Converted list entries, rebuilt only when a sandbox changes state.

    kubelet lists every pod every second or so; building the message (maps of labels and annotations)
    dominated ListPodSandbox at a thousand pods.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[SandboxState, api_pb2.PodSandbox]] = {}

    def get(self, sandbox: Sandbox) -> api_pb2.PodSandbox:
        entry = self._entries.get(sandbox.id)
        if entry is None or entry[0] != sandbox.state:
            entry = (sandbox.state, to_pod_sandbox(sandbox))
            self._entries[sandbox.id] = entry
        return entry[1]

    def prune(self, live_ids: set[str]) -> None:
        if len(self._entries) > 2 * len(live_ids) + 64:
            self._entries = {k: v for k, v in self._entries.items() if k in live_ids}


def to_status(sandbox: Sandbox) -> api_pb2.PodSandboxStatus:
    spec = sandbox.spec
    status = api_pb2.PodSandboxStatus(
        id=sandbox.id, metadata=_metadata(sandbox), state=_STATES[sandbox.state],
        created_at=sandbox.created_at, labels=spec.labels, annotations=spec.annotations,
        runtime_handler=spec.runtime_handler)
    if sandbox.state == SandboxState.READY and sandbox.ips:
        status.network.ip = sandbox.ips[0]
        status.network.additional_ips.extend(api_pb2.PodIP(ip=ip) for ip in sandbox.ips[1:])
    options = sandbox_config(sandbox).linux.security_context.namespace_options
    status.linux.namespaces.options.CopyFrom(options)
    return status


def verbose_info(sandbox: Sandbox) -> dict[str, str]:
    """`crictl inspectp` shows this: where the namespaces are and how the network set-up went."""
    from google.protobuf import json_format

    info: dict[str, Any] = {
        "netnsPath": sandbox.netns_path,
        "ipcNamespacePath": sandbox.ipc_ns_path,
        "utsNamespacePath": sandbox.uts_ns_path,
        "userNamespacePath": sandbox.user_ns_path,
        "sandboxDir": sandbox.dir,
        "network": sandbox.network_name,
        "cniResult": sandbox.cni_result,
        "teardownPending": sandbox.teardown_pending,
        "lastError": sandbox.last_error,
        "timeline": [{"verb": t.verb, "plugin": t.plugin_type, "started": t.started,
                      "durationMs": round(t.duration * 1000, 3), "error": t.error}
                     for t in sandbox.timeline],
        "config": json_format.MessageToDict(sandbox_config(sandbox), preserving_proto_field_name=True),
    }
    return {"info": json.dumps(info)}
