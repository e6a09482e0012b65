"""The sandbox record: what crishim knows about a pod, persisted at every state change."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class SandboxState(enum.StrEnum):
    CREATING = "CREATING"
    READY = "READY"
    NOTREADY = "NOTREADY"


class NamespaceMode(enum.StrEnum):
    """Mirror of CRI NamespaceMode, kept free of gRPC."""

    POD = "POD"
    CONTAINER = "CONTAINER"
    NODE = "NODE"
    TARGET = "TARGET"


@dataclass(frozen=True)
class IDMapping:
    """One line of a user namespace's uid_map or gid_map."""

    container_id: int
    host_id: int
    length: int

    def line(self) -> str:
        return f"{self.container_id} {self.host_id} {self.length}\n"


@dataclass
class UserNamespaceSpec:
    """CRI UserNamespace: POD gives the pod a user namespace of its own with these mappings, NODE
    (like an absent option) keeps the host's."""

    mode: NamespaceMode = NamespaceMode.NODE
    uids: list[IDMapping] = field(default_factory=list)
    gids: list[IDMapping] = field(default_factory=list)

    @property
    def own(self) -> bool:
        return self.mode == NamespaceMode.POD

    @staticmethod
    def from_json(data: dict[str, Any] | None) -> UserNamespaceSpec | None:
        if data is None:
            return None
        return UserNamespaceSpec(mode=NamespaceMode(data["mode"]),
                                 uids=[IDMapping(**m) for m in data.get("uids", [])],
                                 gids=[IDMapping(**m) for m in data.get("gids", [])])


@dataclass
class PortMapping:
    protocol: str  # "tcp" | "udp" | "sctp"
    container_port: int
    host_port: int
    host_ip: str = ""


@dataclass
class DNSConfig:
    servers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


@dataclass
class SandboxSpec:
    """The part of PodSandboxConfig crishim acts on; `raw_config` keeps the rest for status echoes."""

    name: str
    namespace: str
    uid: str
    attempt: int = 0
    hostname: str = ""
    log_directory: str = ""
    runtime_handler: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    dns: DNSConfig | None = None
    port_mappings: list[PortMapping] = field(default_factory=list)
    cgroup_parent: str = ""
    sysctls: dict[str, str] = field(default_factory=dict)
    network_mode: NamespaceMode = NamespaceMode.POD
    pid_mode: NamespaceMode = NamespaceMode.CONTAINER
    ipc_mode: NamespaceMode = NamespaceMode.POD
    userns: UserNamespaceSpec | None = None
    # The request's PodSandboxConfig as the client sent it (serialized, base64), echoed by status and
    # read by container creation; the domain treats it as opaque.
    config_blob: str = ""

    @property
    def host_network(self) -> bool:
        return self.network_mode == NamespaceMode.NODE

    @property
    def host_ipc(self) -> bool:
        return self.ipc_mode == NamespaceMode.NODE

    @property
    def own_userns(self) -> UserNamespaceSpec | None:
        """The pod's user namespace settings when it has one of its own."""
        return self.userns if self.userns is not None and self.userns.own else None

    def dedupe_key(self) -> tuple[str, str, str, int]:
        return (self.name, self.namespace, self.uid, self.attempt)


@dataclass
class PluginTiming:
    verb: str
    plugin_type: str
    started: float
    duration: float
    error: str = ""


@dataclass
class Sandbox:
    id: str
    spec: SandboxSpec
    state: SandboxState
    created_at: int  # ns since the epoch
    dir: str  # on crishim's tmpfs: hostname, hosts, resolv.conf, shm/, the pinned ipc and uts
    # The pod's host name, decided once at creation: the config's, else the node's (as containerd and
    # CRI-O do; the pod name is no default, it may be longer than the 64 bytes sethostname takes).
    hostname: str = ""
    netns_path: str = ""  # "" for host network or once torn down
    ipc_ns_path: str = ""
    uts_ns_path: str = ""
    user_ns_path: str = ""  # "" when the pod uses the host's user namespace
    ips: list[str] = field(default_factory=list)  # primary first
    cni_result: dict[str, Any] | None = None
    network_name: str = ""
    # True once CNI ADD ran (even half-way) and no DEL has succeeded since: teardown is owed.
    teardown_pending: bool = False
    last_error: str = ""
    timeline: list[PluginTiming] = field(default_factory=list)

    @property
    def hostname_path(self) -> str:
        return f"{self.dir}/hostname"

    @property
    def hosts_path(self) -> str:
        return f"{self.dir}/hosts"

    @property
    def resolv_conf_path(self) -> str:
        return f"{self.dir}/resolv.conf"

    @property
    def shm_path(self) -> str:
        return f"{self.dir}/shm"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sandbox:
        spec_data = dict(data["spec"])
        dns = spec_data.pop("dns", None)
        spec_data["userns"] = UserNamespaceSpec.from_json(spec_data.get("userns"))
        spec = SandboxSpec(
            **{k: v for k, v in spec_data.items() if k not in ("port_mappings",)},
            dns=DNSConfig(**dns) if dns is not None else None,
            port_mappings=[PortMapping(**p) for p in spec_data.get("port_mappings", [])],
        )
        spec.network_mode = NamespaceMode(spec.network_mode)
        spec.pid_mode = NamespaceMode(spec.pid_mode)
        spec.ipc_mode = NamespaceMode(spec.ipc_mode)
        fields = {k: v for k, v in data.items() if k not in ("spec", "state", "timeline")}
        return cls(spec=spec, state=SandboxState(data["state"]),
                   timeline=[PluginTiming(**t) for t in data.get("timeline", [])], **fields)
