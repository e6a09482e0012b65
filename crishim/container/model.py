"""What a container is made of (the request, translated) and what crishim remembers about it."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from crishim.container.users import GroupsPolicy
from crishim.sandbox.model import IDMapping, NamespaceMode


class ContainerState(enum.StrEnum):
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    UNKNOWN = "UNKNOWN"


class SeccompKind(enum.StrEnum):
    RUNTIME_DEFAULT = "RuntimeDefault"
    UNCONFINED = "Unconfined"
    LOCALHOST = "Localhost"


class AppArmorKind(enum.StrEnum):
    UNSET = ""  # not asked for: no profile (see container/apparmor.py)
    RUNTIME_DEFAULT = "RuntimeDefault"
    UNCONFINED = "Unconfined"
    LOCALHOST = "Localhost"


@dataclass
class Mount:
    container_path: str
    host_path: str
    readonly: bool = False
    # "private" | "rslave" | "rshared", as CRI's MountPropagation.
    propagation: str = "private"
    # Read-only all the way down: submounts of host_path too (needs readonly and "private").
    recursive_read_only: bool = False
    # An image volume: the image as the request named it, a directory inside it, and (set at creation)
    # the image's id; host_path is then where crishim mounted it.
    image: str = ""
    image_sub_path: str = ""
    image_id: str = ""
    # An idmapped mount (CRI uidMappings/gidMappings), and (set at creation) the idmapped clone of
    # host_path crishim binds in its place.
    uid_mappings: list[IDMapping] = field(default_factory=list)
    gid_mappings: list[IDMapping] = field(default_factory=list)
    idmapped_source: str = ""

    @staticmethod
    def from_json(data: dict[str, Any]) -> Mount:
        data = dict(data)
        for key in ("uid_mappings", "gid_mappings"):
            data[key] = [IDMapping(**m) for m in data.get(key, [])]
        return Mount(**data)


@dataclass
class Resources:
    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_in_bytes: int = 0
    memory_swap_limit_in_bytes: int = 0
    oom_score_adj: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepage_limits: dict[str, int] = field(default_factory=dict)
    unified: dict[str, str] = field(default_factory=dict)


@dataclass
class SecurityContext:
    privileged: bool = False
    add_capabilities: list[str] = field(default_factory=list)
    drop_capabilities: list[str] = field(default_factory=list)
    readonly_rootfs: bool = False
    no_new_privs: bool = False
    run_as_user: int | None = None
    run_as_username: str = ""
    run_as_group: int | None = None
    supplemental_groups: list[int] = field(default_factory=list)
    supplemental_groups_policy: GroupsPolicy = GroupsPolicy.MERGE
    masked_paths: list[str] = field(default_factory=list)
    readonly_paths: list[str] = field(default_factory=list)
    seccomp: SeccompKind = SeccompKind.UNCONFINED
    seccomp_profile_path: str = ""
    apparmor: AppArmorKind = AppArmorKind.UNSET
    apparmor_profile: str = ""  # the profile's name, for LOCALHOST
    pid_mode: NamespaceMode = NamespaceMode.CONTAINER
    target_id: str = ""


@dataclass
class ContainerSpec:
    """The part of a CRI ContainerConfig crishim acts on, free of protobuf."""

    name: str
    attempt: int = 0
    image: str = ""  # as the user named it
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    working_dir: str = ""
    envs: list[tuple[str, str]] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    log_path: str = ""  # relative to the pod's log directory
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    stop_signal: str = ""  # overrides the image's StopSignal
    resources: Resources = field(default_factory=Resources)
    security: SecurityContext = field(default_factory=SecurityContext)

    @staticmethod
    def from_json(data: dict[str, Any]) -> ContainerSpec:
        data = dict(data)
        data["envs"] = [tuple(e) for e in data.get("envs", [])]
        data["mounts"] = [Mount.from_json(m) for m in data.get("mounts", [])]
        data["resources"] = Resources(**data.get("resources", {}))
        sec = dict(data.get("security", {}))
        sec["seccomp"] = SeccompKind(sec.get("seccomp", SeccompKind.UNCONFINED))
        sec["apparmor"] = AppArmorKind(sec.get("apparmor", AppArmorKind.UNSET))
        sec["pid_mode"] = NamespaceMode(sec.get("pid_mode", NamespaceMode.CONTAINER))
        sec["supplemental_groups_policy"] = GroupsPolicy(sec.get("supplemental_groups_policy",
                                                                 GroupsPolicy.MERGE))
        data["security"] = SecurityContext(**sec)
        return ContainerSpec(**data)


@dataclass
class Container:
    """The persisted record; times are ns since the epoch, 0 when not reached."""

    id: str
    sandbox_id: str
    spec: ContainerSpec
    image_id: str
    runtime_handler: str
    dir: str  # bundle, conmon's persist dir and cwd
    log_path: str  # absolute, "" when the pod has no log directory
    created_at: int
    state: ContainerState = ContainerState.CREATED
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int = 0
    conmon_pid: int = 0
    stop_signal: str = "SIGTERM"
    rootfs: str = ""
    # The user the process runs as, resolved at creation.
    uid: int = 0
    gid: int = 0
    additional_gids: list[int] = field(default_factory=list)
    # The pod's hidden PID 1 for a pod-wide PID namespace, not a CRI container.
    infra: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Container:
        data = dict(data)
        data["spec"] = ContainerSpec.from_json(data["spec"])
        data["state"] = ContainerState(data["state"])
        return Container(**data)
