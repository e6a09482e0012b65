"""ContainerConfig <-> the container domain objects, and Container -> the CRI messages."""

from __future__ import annotations

import json

from crishim.api.runtime.v1 import api_pb2
from crishim.container.manager import ListFilter
from crishim.container.model import (
    AppArmorKind,
    Container,
    ContainerSpec,
    ContainerState,
    Mount,
    Resources,
    SeccompKind,
    SecurityContext,
)
from crishim.container.users import GroupsPolicy
from crishim.container.validate import validate_resources
from crishim.errors import InvalidArgument
from crishim.sandbox.model import IDMapping, NamespaceMode
from crishim.server.request_check import enum_name, reject_nul
from crishim.server.sandbox_convert import idmappings_from

STATES = {
    ContainerState.CREATED: api_pb2.CONTAINER_CREATED,
    ContainerState.RUNNING: api_pb2.CONTAINER_RUNNING,
    ContainerState.EXITED: api_pb2.CONTAINER_EXITED,
    ContainerState.UNKNOWN: api_pb2.CONTAINER_UNKNOWN,
}
_STATE_OF = {v: k for k, v in STATES.items()}
_PROPAGATION = {
    api_pb2.PROPAGATION_PRIVATE: "private",
    api_pb2.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    api_pb2.PROPAGATION_BIDIRECTIONAL: "rshared",
}
_PROPAGATION_OF = {v: k for k, v in _PROPAGATION.items()}
# The deprecated string fields' values (containerd's generateSecurityProfile); "" is "not asked for".
_LEGACY_PROFILES = {"unconfined": "Unconfined", "runtime/default": "RuntimeDefault",
                    "docker/default": "RuntimeDefault"}
LOCALHOST_PREFIX = "localhost/"


def resources_from(res: api_pb2.LinuxContainerResources, field: str = "config.linux.resources") -> Resources:
    resources = Resources(
        cpu_period=res.cpu_period, cpu_quota=res.cpu_quota, cpu_shares=res.cpu_shares,
        memory_limit_in_bytes=res.memory_limit_in_bytes,
        memory_swap_limit_in_bytes=res.memory_swap_limit_in_bytes,
        oom_score_adj=res.oom_score_adj, cpuset_cpus=res.cpuset_cpus, cpuset_mems=res.cpuset_mems,
        hugepage_limits={h.page_size: h.limit for h in res.hugepage_limits},
        unified=dict(res.unified),
    )
    validate_resources(resources, field)
    return resources


def resources_to(res: Resources) -> api_pb2.LinuxContainerResources:
    return api_pb2.LinuxContainerResources(
        cpu_period=res.cpu_period, cpu_quota=res.cpu_quota, cpu_shares=res.cpu_shares,
        memory_limit_in_bytes=res.memory_limit_in_bytes,
        memory_swap_limit_in_bytes=res.memory_swap_limit_in_bytes,
        oom_score_adj=res.oom_score_adj, cpuset_cpus=res.cpuset_cpus, cpuset_mems=res.cpuset_mems,
        hugepage_limits=[api_pb2.HugepageLimit(page_size=k, limit=v)
                         for k, v in res.hugepage_limits.items()],
        unified=res.unified,
    )


def _profile(sc: api_pb2.LinuxContainerSecurityContext, field: str,
             legacy_field: str) -> tuple[str, str] | None:
    """A security profile (seccomp, AppArmor) as (ProfileType name, localhost ref), None when not asked
    for. The structured field wins; the deprecated string is read when it is absent."""
    where = f"config.linux.security_context.{field}"
    if sc.HasField(field):
        profile: api_pb2.SecurityProfile = getattr(sc, field)
        kind = enum_name(api_pb2.SecurityProfile.ProfileType, profile.profile_type, f"{where}.profile_type")
        ref = profile.localhost_ref.removeprefix(LOCALHOST_PREFIX)
        if kind == "Localhost" and not ref:
            raise InvalidArgument(f"{where}: profile type Localhost needs localhost_ref")
        if kind != "Localhost" and profile.localhost_ref:
            raise InvalidArgument(f"{where}.localhost_ref must only be set for profile type Localhost")
        return kind, ref
    value = getattr(sc, legacy_field)
    if not value:
        return None
    if value.startswith(LOCALHOST_PREFIX):
        return "Localhost", value.removeprefix(LOCALHOST_PREFIX)
    if value not in _LEGACY_PROFILES:
        raise InvalidArgument(f"config.linux.security_context.{legacy_field}: unknown profile {value!r}")
    return _LEGACY_PROFILES[value], ""


def _seccomp(sc: api_pb2.LinuxContainerSecurityContext) -> tuple[SeccompKind, str]:
    """Unconfined when not asked for, as in containerd without a configured unset profile."""
    kind, ref = _profile(sc, "seccomp", "seccomp_profile_path") or ("Unconfined", "")
    return SeccompKind(kind), ref


def _apparmor(sc: api_pb2.LinuxContainerSecurityContext) -> tuple[AppArmorKind, str]:
    kind, ref = _profile(sc, "apparmor", "apparmor_profile") or ("", "")
    return AppArmorKind(kind), ref


def _groups_policy(value: int) -> GroupsPolicy:
    if value not in api_pb2.SupplementalGroupsPolicy.values():
        raise InvalidArgument(f"security_context.supplemental_groups_policy: unknown value {value}")
    return GroupsPolicy(api_pb2.SupplementalGroupsPolicy.Name(value))


def _security(sc: api_pb2.LinuxContainerSecurityContext) -> SecurityContext:
    kind, path = _seccomp(sc)
    apparmor, apparmor_profile = _apparmor(sc)
    if sc.capabilities.add_ambient_capabilities:
        raise InvalidArgument("ambient capabilities are not supported")
    options = sc.namespace_options
    return SecurityContext(
        privileged=sc.privileged,
        add_capabilities=list(sc.capabilities.add_capabilities),
        drop_capabilities=list(sc.capabilities.drop_capabilities),
        readonly_rootfs=sc.readonly_rootfs,
        no_new_privs=sc.no_new_privs,
        run_as_user=sc.run_as_user.value if sc.HasField("run_as_user") else None,
        run_as_username=sc.run_as_username,
        run_as_group=sc.run_as_group.value if sc.HasField("run_as_group") else None,
        supplemental_groups=list(sc.supplemental_groups),
        supplemental_groups_policy=_groups_policy(sc.supplemental_groups_policy),
        masked_paths=list(sc.masked_paths),
        readonly_paths=list(sc.readonly_paths),
        seccomp=kind,
        seccomp_profile_path=path,
        apparmor=apparmor,
        apparmor_profile=apparmor_profile,
        pid_mode=NamespaceMode(enum_name(api_pb2.NamespaceMode, options.pid,
                                         "config.linux.security_context.namespace_options.pid")),
        target_id=options.target_id,
    )


def _mount_from(m: api_pb2.Mount) -> Mount:
    if m.propagation not in _PROPAGATION:
        raise InvalidArgument(f"mount {m.container_path!r}: unknown propagation {m.propagation}")
    image = m.image.image if m.HasField("image") else ""
    if image and m.host_path:
        raise InvalidArgument(f"mount {m.container_path!r}: host_path must be empty for an image volume")
    return Mount(container_path=m.container_path, host_path=m.host_path, readonly=m.readonly,
                 propagation=_PROPAGATION[m.propagation], recursive_read_only=m.recursive_read_only,
                 image=image, image_sub_path=m.image_sub_path,
                 uid_mappings=idmappings_from(m.uidMappings), gid_mappings=idmappings_from(m.gidMappings))


def _idmapping_to(m: IDMapping) -> api_pb2.IDMapping:
    return api_pb2.IDMapping(container_id=m.container_id, host_id=m.host_id, length=m.length)


def _mount_to(m: Mount) -> api_pb2.Mount:
    """As requested, with where crishim mounted an image volume and the image's id as its image_ref."""
    return api_pb2.Mount(
        container_path=m.container_path, host_path=m.host_path, readonly=m.readonly,
        propagation=_PROPAGATION_OF[m.propagation], recursive_read_only=m.recursive_read_only,
        image=api_pb2.ImageSpec(image=m.image, image_ref=m.image_id) if m.image else None,
        image_sub_path=m.image_sub_path, uidMappings=[_idmapping_to(i) for i in m.uid_mappings],
        gidMappings=[_idmapping_to(i) for i in m.gid_mappings])


def spec_from_config(config: api_pb2.ContainerConfig) -> ContainerSpec:
    reject_nul(config, "config")
    if not config.metadata.name:
        raise InvalidArgument("container config: metadata.name is required")
    if not config.image.image:
        raise InvalidArgument("container config: image.image is required")
    if config.devices or config.CDI_devices:
        raise InvalidArgument("container config: devices are not supported")
    mounts = [_mount_from(m) for m in config.mounts]
    stop_signal = ""
    if config.stop_signal != api_pb2.RUNTIME_DEFAULT:
        stop_signal = enum_name(api_pb2.Signal, config.stop_signal, "config.stop_signal")
    return ContainerSpec(
        name=config.metadata.name,
        attempt=config.metadata.attempt,
        image=config.image.user_specified_image or config.image.image,
        command=list(config.command),
        args=list(config.args),
        working_dir=config.working_dir,
        envs=[(kv.key, kv.value) for kv in config.envs],
        mounts=mounts,
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        log_path=config.log_path,
        stdin=config.stdin,
        stdin_once=config.stdin_once,
        tty=config.tty,
        stop_signal=stop_signal,
        resources=resources_from(config.linux.resources),
        security=_security(config.linux.security_context),
    )


def filter_from(flt: api_pb2.ContainerFilter) -> ListFilter:
    state = None
    if flt.HasField("state"):
        state = _STATE_OF.get(flt.state.state)
    return ListFilter(id_prefix=flt.id, state=state, sandbox_id=flt.pod_sandbox_id,
                      labels=dict(flt.label_selector))


def _metadata(c: Container) -> api_pb2.ContainerMetadata:
    return api_pb2.ContainerMetadata(name=c.spec.name, attempt=c.spec.attempt)


def to_container(c: Container) -> api_pb2.Container:
    return api_pb2.Container(
        id=c.id, pod_sandbox_id=c.sandbox_id, metadata=_metadata(c),
        image=api_pb2.ImageSpec(image=c.spec.image), image_ref=c.image_id, image_id=c.image_id,
        state=STATES[c.state], created_at=c.created_at, labels=c.spec.labels,
        annotations=c.spec.annotations)


def _signal(name: str) -> str:
    """The CRI enum's name for a signal (`TERM`, `SIGTERM`); numbers map to RUNTIME_DEFAULT."""
    full = name if name.startswith("SIG") else f"SIG{name}"
    return full if full in api_pb2.Signal.keys() else "RUNTIME_DEFAULT"  # noqa: SIM118


def _supplemental_groups(c: Container) -> list[int]:
    """The process's supplementary groups, the primary gid first (records written before it was
    stored among them lack it)."""
    return list(dict.fromkeys([c.gid, *c.additional_gids]))


def to_status(c: Container, image_ref: str) -> api_pb2.ContainerStatus:
    """`image_ref`: the image's digested reference (`ImageManager.digested_ref`), where
    Container.image_ref and image_id hold the id."""
    return api_pb2.ContainerStatus(
        id=c.id, metadata=_metadata(c), state=STATES[c.state], created_at=c.created_at,
        started_at=c.started_at, finished_at=c.finished_at, exit_code=c.exit_code,
        image=api_pb2.ImageSpec(image=c.spec.image), image_ref=image_ref, image_id=c.image_id,
        reason=c.reason, message=c.message, labels=c.spec.labels,
        annotations=c.spec.annotations,
        mounts=[_mount_to(m) for m in c.spec.mounts],
        log_path=c.log_path,
        resources=api_pb2.ContainerResources(linux=resources_to(c.spec.resources)),
        user=api_pb2.ContainerUser(linux=api_pb2.LinuxContainerUser(
            uid=c.uid, gid=c.gid, supplemental_groups=_supplemental_groups(c))),
        stop_signal=_signal(c.stop_signal),
    )


def verbose_info(c: Container) -> dict[str, str]:
    return {"info": json.dumps({
        "pid": c.pid, "conmonPid": c.conmon_pid, "runtimeHandler": c.runtime_handler,
        "bundle": c.dir, "rootfs": c.rootfs, "sandboxID": c.sandbox_id,
    })}
