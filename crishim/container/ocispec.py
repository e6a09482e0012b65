"""Build a container's OCI runtime spec (config.json) from its CRI spec, the pod and the image.

A pure function of its inputs so every rule can be tested without a runtime; the caller reads files
(passwd, seccomp profiles) and host facts (our own oom_score_adj) beforehand.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Any

from crishim.container import seccomp
from crishim.container.model import ContainerSpec, Resources, SeccompKind
from crishim.container.users import User
from crishim.errors import FailedPrecondition, InvalidArgument
from crishim.sandbox.model import IDMapping, NamespaceMode, Sandbox

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# containerd's default set (oci.defaultUnixCaps).
DEFAULT_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
# Every capability name we know, in the kernel's bit order (CAP_CHOWN is bit 0).
ALL_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]
# containerd's defaults for unprivileged containers.
DEFAULT_MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
    "/sys/devices/virtual/powercap", "/proc/scsi",
]
DEFAULT_READONLY_PATHS = [
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
]
PROPAGATION_OPTION = {"private": "rprivate", "rslave": "rslave", "rshared": "rshared"}


@dataclass
class SpecInputs:
    """Everything the spec depends on besides the CRI spec and the pod."""

    container_id: str
    rootfs: str
    user: User
    cgroups_path: str
    image_config: dict[str, Any] = field(default_factory=dict)
    # Our own oom_score_adj: the runtime cannot go below it without CAP_SYS_RESOURCE.
    oom_score_adj_floor: int = 0
    # The parsed profile file for SeccompKind.LOCALHOST.
    localhost_seccomp: dict[str, Any] | None = None
    # False where the host has no usable hugetlb controller: kubelet sends limits for every page
    # size, which the runtimes would refuse there.
    hugetlb: bool = True
    # The capabilities crishim itself holds (held_capabilities); None: every known one.
    held_capabilities: list[str] | None = None
    # PID whose PID namespace a TARGET container (the target's init) or a POD container (the pod's
    # infra process) joins.
    target_pid: int = 0
    # The AppArmor profile to run under ("" for none), from apparmor.process_profile.
    apparmor_profile: str = ""


def process_args(spec: ContainerSpec, image_config: dict[str, Any]) -> list[str]:
    """Kubernetes' rule: `command` replaces the entrypoint and drops the image's Cmd."""
    if spec.command:
        argv = [*spec.command, *spec.args]
    else:
        argv = [*(image_config.get("Entrypoint") or []), *(spec.args or image_config.get("Cmd") or [])]
    if not argv:
        raise InvalidArgument(f"container {spec.name!r}: no command given and the image has no "
                              "Entrypoint or Cmd")
    if not argv[0]:
        raise InvalidArgument(f"container {spec.name!r}: the command to run is an empty string")
    return argv


def environment(spec: ContainerSpec, image_config: dict[str, Any], hostname: str) -> list[str]:
    env: dict[str, str] = {}
    for item in image_config.get("Env") or []:
        key, _, value = item.partition("=")
        env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    if hostname:
        env["HOSTNAME"] = hostname
    if spec.tty:
        env.setdefault("TERM", "xterm")
    for key, value in spec.envs:
        if not key or "=" in key:
            raise InvalidArgument(f"container {spec.name!r}: bad environment variable name {key!r}")
        env[key] = value
    return [f"{k}={v}" for k, v in env.items()]


def _cap_name(name: str) -> str:
    full = name.upper() if name.upper().startswith("CAP_") else f"CAP_{name.upper()}"
    if full not in ALL_CAPABILITIES:
        raise InvalidArgument(f"unknown capability {name!r}")
    return full


def held_capabilities(proc_status: str) -> list[str]:
    """The capabilities a process can hand on, from its /proc/PID/status: in both its effective and
    its bounding set, limited to the names we know. "All capabilities" means these (as in containerd
    and CRI-O): a node whose bounding set lacks one (CAP_SYS_RESOURCE here) cannot grant it."""
    masks: dict[str, int] = {}
    for line in proc_status.splitlines():
        key, _, value = line.partition(":")
        if key in ("CapEff", "CapBnd"):
            masks[key] = int(value.strip(), 16)
    if len(masks) != 2:
        raise ValueError("no CapEff/CapBnd lines in the process status")
    held = masks["CapEff"] & masks["CapBnd"]
    return [name for bit, name in enumerate(ALL_CAPABILITIES) if held >> bit & 1]


def capabilities(add: list[str], drop: list[str], privileged: bool,
                 held: list[str] | None = None) -> list[str]:
    """containerd's order: ALL in add, then ALL in drop, then single adds, then single drops.

    `held` is what the runtime process holds (default: every known capability): privileged and
    ALL grant exactly these, the defaults are cut down to them, and a single add beyond them fails.
    """
    available = ALL_CAPABILITIES if held is None else [c for c in ALL_CAPABILITIES if c in held]
    if privileged:
        return list(available)
    caps = [c for c in DEFAULT_CAPABILITIES if c in available]
    if any(c.upper() == "ALL" for c in add):
        caps = list(available)
    if any(c.upper() == "ALL" for c in drop):
        caps = []
    for name in add:
        if name.upper() == "ALL":
            continue
        full = _cap_name(name)
        if full not in available:
            raise FailedPrecondition(f"capability {full} cannot be added: the runtime does not hold "
                                     "it (not in the node's bounding set)")
        if full not in caps:
            caps.append(full)
    dropped = {_cap_name(n) for n in drop if n.upper() != "ALL"}
    return [c for c in caps if c not in dropped]


def linux_resources(res: Resources, privileged: bool = False, hugetlb: bool = True
                    ) -> dict[str, Any]:
    out: dict[str, Any] = {
        "devices": [{"allow": privileged, "access": "rwm"}],
    }
    cpu: dict[str, Any] = {}
    if res.cpu_shares > 0:
        cpu["shares"] = res.cpu_shares
    if res.cpu_quota != 0:
        cpu["quota"] = res.cpu_quota
    if res.cpu_period > 0:
        cpu["period"] = res.cpu_period
    if res.cpuset_cpus:
        cpu["cpus"] = res.cpuset_cpus
    if res.cpuset_mems:
        cpu["mems"] = res.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    memory: dict[str, Any] = {}
    if res.memory_limit_in_bytes > 0:
        memory["limit"] = res.memory_limit_in_bytes
    if res.memory_swap_limit_in_bytes > 0:
        memory["swap"] = res.memory_swap_limit_in_bytes
    if memory:
        out["memory"] = memory
    if res.hugepage_limits and hugetlb:
        out["hugepageLimits"] = [{"pageSize": k, "limit": v} for k, v in res.hugepage_limits.items()]
    if res.unified:
        out["unified"] = dict(res.unified)
    return out


def _bind(destination: str, source: str, readonly: bool, propagation: str = "rprivate",
          recursive_read_only: bool = False) -> dict[str, Any]:
    mode = "rro" if recursive_read_only else "ro" if readonly else "rw"
    return {"destination": destination, "type": "bind", "source": source,
            "options": ["rbind", propagation, mode]}


def mounts(spec: ContainerSpec, sandbox: Sandbox) -> list[dict[str, Any]]:
    """Defaults, then the pod's files and /dev/shm, then the CRI mounts, which win on a clash."""
    privileged = spec.security.privileged
    sys_ro = [] if privileged else ["ro"]
    result: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", *sys_ro]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", *sys_ro]},
    ]
    if sandbox.spec.ipc_mode == NamespaceMode.NODE:
        result.append(_bind("/dev/shm", "/dev/shm", False))
    elif sandbox.dir:
        result.append({"destination": "/dev/shm", "type": "bind", "source": sandbox.shm_path,
                       "options": ["rbind", "rprivate", "nosuid", "nodev", "noexec", "rw"]})
    else:
        result.append({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                       "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]})
    if sandbox.dir:
        ro = spec.security.readonly_rootfs
        result += [_bind("/etc/hostname", sandbox.hostname_path, ro),
                   _bind("/etc/hosts", sandbox.hosts_path, ro),
                   _bind("/etc/resolv.conf", sandbox.resolv_conf_path, ro)]
    wanted = {m.container_path.rstrip("/") or "/" for m in spec.mounts}
    result = [m for m in result if m["destination"] not in wanted]
    ordered = sorted(spec.mounts, key=lambda m: len(m.container_path.rstrip("/").split("/")))
    result += [_bind(m.container_path, m.idmapped_source or m.host_path, m.readonly,
                     PROPAGATION_OPTION[m.propagation], m.recursive_read_only)
               for m in ordered]
    return result


def id_mappings(sandbox: Sandbox) -> dict[str, Any]:
    """linux.uidMappings/gidMappings of a pod with its own user namespace: runc joins the pinned one
    by path but still wants the mappings (it chowns what it creates to the mapped root)."""
    userns = sandbox.spec.own_userns
    if userns is None or not sandbox.user_ns_path:
        return {}

    def oci(mappings: list[IDMapping]) -> list[dict[str, int]]:
        return [{"containerID": m.container_id, "hostID": m.host_id, "size": m.length}
                for m in mappings]

    return {"uidMappings": oci(userns.uids), "gidMappings": oci(userns.gids)}


def namespaces(spec: ContainerSpec, sandbox: Sandbox, target_pid: int) -> list[dict[str, str]]:
    result = [{"type": "mount"}]
    if sandbox.user_ns_path:
        result.append({"type": "user", "path": sandbox.user_ns_path})
    if sandbox.netns_path:
        result.append({"type": "network", "path": sandbox.netns_path})
    elif not sandbox.spec.host_network:
        raise FailedPrecondition(f"pod sandbox {sandbox.id} has no network namespace (stopped?)")
    if sandbox.ipc_ns_path:
        result.append({"type": "ipc", "path": sandbox.ipc_ns_path})
    elif sandbox.spec.ipc_mode != NamespaceMode.NODE:
        result.append({"type": "ipc"})
    if sandbox.uts_ns_path:
        result.append({"type": "uts", "path": sandbox.uts_ns_path})
    elif not sandbox.spec.host_network:
        result.append({"type": "uts"})
    mode = spec.security.pid_mode
    if mode == NamespaceMode.CONTAINER:
        result.append({"type": "pid"})
    elif mode in (NamespaceMode.TARGET, NamespaceMode.POD):
        if target_pid <= 0:
            owner = (f"target container {spec.security.target_id!r}"
                     if mode == NamespaceMode.TARGET else f"pod {sandbox.id}'s infra process")
            raise FailedPrecondition(f"{owner} is not running")
        result.append({"type": "pid", "path": f"/proc/{target_pid}/ns/pid"})
    return result


def seccomp_section(spec: ContainerSpec, caps: list[str],
                    localhost: dict[str, Any] | None) -> dict[str, Any] | None:
    sec = spec.security
    if sec.privileged or sec.seccomp == SeccompKind.UNCONFINED:
        return None
    if sec.seccomp == SeccompKind.LOCALHOST:
        if localhost is None:
            raise InvalidArgument(f"seccomp profile {sec.seccomp_profile_path!r} was not loaded")
        return localhost
    return seccomp.default_profile(caps, platform.machine())


def build_spec(spec: ContainerSpec, sandbox: Sandbox, inputs: SpecInputs) -> dict[str, Any]:
    sec = spec.security
    image_config = inputs.image_config
    caps = capabilities(sec.add_capabilities, sec.drop_capabilities, sec.privileged,
                        inputs.held_capabilities)
    namespace_list = namespaces(spec, sandbox, inputs.target_pid)
    has_uts = any(ns["type"] == "uts" for ns in namespace_list)
    hostname = sandbox.hostname if has_uts else ""
    user = inputs.user
    process: dict[str, Any] = {
        "terminal": spec.tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.additional_gids)},
        "args": process_args(spec, image_config),
        "env": environment(spec, image_config, hostname),
        "cwd": spec.working_dir or image_config.get("WorkingDir") or "/",
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": sec.no_new_privs,
        "oomScoreAdj": max(spec.resources.oom_score_adj, inputs.oom_score_adj_floor),
    }
    if inputs.apparmor_profile:
        process["apparmorProfile"] = inputs.apparmor_profile
    if not process["cwd"].startswith("/"):
        raise InvalidArgument(f"working directory {process['cwd']!r} must be absolute")
    linux: dict[str, Any] = {
        "namespaces": namespace_list,
        "cgroupsPath": inputs.cgroups_path,
        "resources": linux_resources(spec.resources, sec.privileged, inputs.hugetlb),
        "maskedPaths": [] if sec.privileged else (sec.masked_paths or DEFAULT_MASKED_PATHS),
        "readonlyPaths": [] if sec.privileged else (sec.readonly_paths or DEFAULT_READONLY_PATHS),
        **id_mappings(sandbox),
    }
    if sandbox.spec.sysctls:
        linux["sysctl"] = dict(sandbox.spec.sysctls)
    profile = seccomp_section(spec, caps, inputs.localhost_seccomp)
    if profile is not None:
        linux["seccomp"] = profile
    mount_list = mounts(spec, sandbox)
    if any(m.propagation == "rshared" for m in spec.mounts):
        linux["rootfsPropagation"] = "rshared"
    result: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": inputs.rootfs, "readonly": sec.readonly_rootfs},
        "mounts": mount_list,
        "annotations": {
            **spec.annotations,
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": spec.name,
            "io.kubernetes.cri.sandbox-id": sandbox.id,
        },
        "linux": linux,
    }
    if hostname:
        result["hostname"] = hostname
    return result


# PID 1 of a pod-wide PID namespace: catatonit in pause mode (-P) sleeps on signals, reaps whatever
# is reparented to it and exits on TERM; one static process of a few hundred KiB.
INFRA_BINARY = "/catatonit"


def infra_spec(sandbox: Sandbox, rootfs: str, cgroups_path: str, binary: str,
               oom_score_adj_floor: int) -> dict[str, Any]:
    """The pod's infra process for shareProcessNamespace, as CRI-O runs one: a static pause binary
    bind-mounted into an empty read-only root, in the pod's namespaces and a new PID namespace."""
    spec = ContainerSpec(name="infra", command=[INFRA_BINARY, "-P"])
    namespace_list = namespaces(spec, sandbox, 0)
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False, "user": {"uid": 0, "gid": 0}, "args": spec.command,
            "env": [f"PATH={DEFAULT_PATH}"], "cwd": "/",
            "capabilities": {"bounding": [], "effective": [], "permitted": []},
            "noNewPrivileges": True, "oomScoreAdj": oom_score_adj_floor,
        },
        "root": {"path": rootfs, "readonly": True},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": INFRA_BINARY, "type": "bind", "source": binary,
             "options": ["rbind", "rprivate", "ro"]},
        ],
        "annotations": {"io.kubernetes.cri.container-type": "sandbox",
                        "io.kubernetes.cri.sandbox-id": sandbox.id},
        "linux": {
            "namespaces": namespace_list,
            "cgroupsPath": cgroups_path,
            "resources": linux_resources(Resources()),
            "maskedPaths": DEFAULT_MASKED_PATHS,
            "readonlyPaths": DEFAULT_READONLY_PATHS,
            **id_mappings(sandbox),
        },
    }


def exec_process(container_process: dict[str, Any], cmd: list[str]) -> dict[str, Any]:
    """An exec runs as the container's init does (user, env, caps, cwd), without a terminal."""
    if not cmd:
        raise InvalidArgument("exec: empty command")
    process = dict(container_process)
    process["args"] = list(cmd)
    process["terminal"] = False
    process.pop("oomScoreAdj", None)
    return process
