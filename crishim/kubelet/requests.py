"""kubelet's CRI request shapes, built from a parsed Pod (pure functions: no I/O, no clock).

Each builder names the kubelet source it mirrors; the field-by-field account is in
shared/design/kubelet-calls.md.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.kubelet.manifest import Container, DNSConfig, Pod, SeccompProfile

# pkg/kubelet/types/labels.go and pkg/kubelet/kuberuntime/labels.go
POD_NAME_LABEL = "io.kubernetes.pod.name"
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
POD_UID_LABEL = "io.kubernetes.pod.uid"
CONTAINER_NAME_LABEL = "io.kubernetes.container.name"
CONTAINER_HASH = "io.kubernetes.container.hash"
RESTART_COUNT = "io.kubernetes.container.restartCount"
TERMINATION_MESSAGE_PATH = "io.kubernetes.container.terminationMessagePath"
TERMINATION_MESSAGE_POLICY = "io.kubernetes.container.terminationMessagePolicy"
PRE_STOP_HANDLER = "io.kubernetes.container.preStopHandler"
CONTAINER_PORTS = "io.kubernetes.container.ports"
TERMINATION_GRACE = "io.kubernetes.pod.terminationGracePeriod"

# pkg/securitycontext/util.go (DefaultMaskedPaths, DefaultReadonlyPaths)
DEFAULT_MASKED_PATHS = ("/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                        "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                        "/sys/firmware", "/sys/devices/virtual/powercap")
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# pkg/kubelet/cm/helpers_linux.go and pkg/kubelet/qos/policy.go
MIN_SHARES, MAX_SHARES, SHARES_PER_CPU, QUOTA_PERIOD, MIN_QUOTA = 2, 262144, 1024, 100000, 1000
GUARANTEED_OOM_SCORE_ADJ, BESTEFFORT_OOM_SCORE_ADJ = -997, 1000


NO_DNS = DNSConfig()


class ContainerConfigError(ValueError):
    """The container cannot be configured (kubelet's CreateContainerConfigError)."""


@dataclass(frozen=True)
class Node:
    """What kubelet knows about its node that shapes the requests (flags and machine facts)."""

    log_root: str = "/var/log/pods"
    root_dir: str = "/var/lib/kubelet"
    cgroup_root: str = "/"
    cluster_dns: tuple[str, ...] = ()
    cluster_domain: str = "cluster.local"
    host_dns: DNSConfig = NO_DNS
    node_name: str = ""
    node_ip: str = ""
    memory_capacity: int = 0
    hugepage_sizes: tuple[str, ...] = ()  # CRI page sizes, e.g. "2MB", "1GB"
    runtime_handler: str = ""


@dataclass(frozen=True)
class ImageUser:
    """The image's user as ImageStatus reports it (image.uid or image.username)."""

    uid: int | None = None
    username: str = ""


def pod_log_dir(pod: Pod, log_root: str) -> str:
    """pkg/kubelet/kuberuntime/helpers.go BuildPodLogsDirectory: <root>/<ns>_<name>_<uid>."""
    return f"{log_root.rstrip('/')}/{pod.namespace}_{pod.name}_{pod.uid}"


def container_log_path(container_name: str, restart_count: int) -> str:
    """BuildContainerLogsDirectory + "<restart>.log": relative to the sandbox's log_directory."""
    return f"{container_name}/{restart_count}.log"


def pod_dir(pod: Pod, node: Node) -> str:
    """pkg/kubelet/kubelet_getters.go getPodDir: <root-dir>/pods/<uid>."""
    return f"{node.root_dir.rstrip('/')}/pods/{pod.uid}"


def qos_class(pod: Pod) -> str:
    """pkg/apis/core/v1/helper/qos GetPodQOS: BestEffort, Guaranteed or Burstable."""
    containers = (*pod.init_containers, *pod.containers)
    if not any(c.resources.requests or c.resources.limits for c in containers):
        return "BestEffort"
    for c in containers:
        for name in ("cpu", "memory"):
            limit = c.resources.limits.get(name)
            if limit is None or c.resources.requests.get(name, limit) != limit:
                return "Burstable"
    return "Guaranteed"


QOS_CLASSES = ("Guaranteed", "Burstable", "BestEffort")


def qos_cgroup_parent(uid: str, qos: str, node: Node) -> str:
    """pkg/kubelet/cm/pod_container_manager_linux.go GetPodContainerName (cgroupfs driver):
    <cgroup-root>/kubepods[/burstable|/besteffort]/pod<uid>."""
    middle = "" if qos == "Guaranteed" else f"/{qos.lower()}"
    return f"{node.cgroup_root.rstrip('/')}/kubepods{middle}/pod{uid}"


def pod_cgroup_parent(pod: Pod, node: Node) -> str:
    return qos_cgroup_parent(pod.uid, qos_class(pod), node)


def pod_hostname(pod: Pod, cluster_domain: str) -> tuple[str, str]:
    """pkg/kubelet/kubelet_pods.go GeneratePodHostNameAndDomain: (hostname, domain)."""
    hostname = pod.hostname or pod.name[:63].rstrip("-.")
    domain = f"{pod.subdomain}.{pod.namespace}.svc.{cluster_domain}" if pod.subdomain else ""
    return hostname, domain


def parse_resolv_conf(text: str) -> DNSConfig:
    """pkg/kubelet/network/dns/dns.go parseResolvConf: nameservers, the last search line, options."""
    servers: list[str] = []
    searches: list[str] = []
    options: list[tuple[str, str | None]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].split()
        if not line:
            continue
        if line[0] == "nameserver" and len(line) > 1:
            servers.append(line[1])
        elif line[0] == "search":
            searches = [s for s in line[1:] if s != "."]
        elif line[0] == "options":
            for option in line[1:]:
                name, sep, value = option.partition(":")
                options.append((name, value if sep else None))
    return DNSConfig(tuple(servers), tuple(searches), tuple(options))


def _merge_options(base: tuple[tuple[str, str | None], ...],
                   extra: tuple[tuple[str, str | None], ...]) -> list[str]:
    """dns.go mergeDNSOptions: later values of an option win; formatted name[:value]."""
    merged: dict[str, str | None] = {}
    for name, value in (*base, *extra):
        merged[name] = value
    return [name if value is None else f"{name}:{value}" for name, value in merged.items()]


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def pod_dns(pod: Pod, node: Node) -> api_pb2.DNSConfig:
    """pkg/kubelet/network/dns/dns.go GetPodDNS + appendDNSConfig.

    ClusterFirst (and ClusterFirstWithHostNet) use the cluster DNS; without one configured, or for
    ClusterFirst on hostNetwork, kubelet falls back to the node's resolv.conf (Default). None uses only
    the pod's dnsConfig, which is appended to the others.
    """
    policy = pod.dns_policy
    if policy == "ClusterFirst" and pod.host_network:
        policy = "Default"
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet") and not node.cluster_dns:
        policy = "Default"
    servers: list[str] = []
    searches: list[str] = []
    options: tuple[tuple[str, str | None], ...] = ()
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet"):
        servers = list(node.cluster_dns)
        domain = node.cluster_domain
        searches = [f"{pod.namespace}.svc.{domain}", f"svc.{domain}", domain, *node.host_dns.searches]
        options = (("ndots", "5"),)
    elif policy == "Default":
        servers, searches, options = list(node.host_dns.nameservers), list(node.host_dns.searches), \
            node.host_dns.options
    extra = pod.dns_config or DNSConfig()
    return api_pb2.DNSConfig(servers=_unique([*servers, *extra.nameservers]),
                             searches=_unique([*searches, *extra.searches]),
                             options=_merge_options(options, extra.options))


def sandbox_labels(pod: Pod) -> dict[str, str]:
    """pkg/kubelet/kuberuntime/labels.go newPodLabels: the pod's labels plus its identity."""
    return {**pod.labels, POD_NAME_LABEL: pod.name, POD_NAMESPACE_LABEL: pod.namespace,
            POD_UID_LABEL: pod.uid}


def namespace_options(pod: Pod) -> api_pb2.NamespaceOption:
    """pkg/kubelet/kuberuntime/util.go namespacesForPod."""
    return api_pb2.NamespaceOption(
        network=api_pb2.NODE if pod.host_network else api_pb2.POD,
        pid=(api_pb2.NODE if pod.host_pid else api_pb2.POD if pod.share_process_namespace
             else api_pb2.CONTAINER),
        ipc=api_pb2.NODE if pod.host_ipc else api_pb2.POD)


def _seccomp(profile: SeccompProfile | None, node: Node) -> api_pb2.SecurityProfile:
    """pkg/kubelet/kuberuntime/helpers.go getSeccompProfile: Unconfined unless asked (SeccompDefault off)."""
    if profile is None or profile.type == "Unconfined":
        return api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Unconfined)
    if profile.type == "RuntimeDefault":
        return api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault)
    return api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Localhost,
                                   localhost_ref=f"{node.root_dir.rstrip('/')}/seccomp/{profile.localhost_profile}")


def _supplemental_groups(pod: Pod) -> list[int]:
    groups = list(pod.security_context.supplemental_groups)
    if pod.security_context.fs_group is not None:
        groups.insert(0, pod.security_context.fs_group)
    return _unique_ints(groups)


def _unique_ints(values: list[int]) -> list[int]:
    return list(dict.fromkeys(values))


def sandbox_config(pod: Pod, attempt: int, node: Node,
                   annotations: Mapping[str, str]) -> api_pb2.PodSandboxConfig:
    """pkg/kubelet/kuberuntime/kuberuntime_sandbox.go generatePodSandboxConfig and
    generatePodSandboxLinuxConfig. `annotations` are the pod's as kubelet holds them (config.seen/source)."""
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=pod.name, namespace=pod.namespace, uid=pod.uid,
                                            attempt=attempt),
        labels=sandbox_labels(pod), annotations=dict(annotations),
        log_directory=pod_log_dir(pod, node.log_root),
        dns_config=pod_dns(pod, node))
    if not pod.host_network:
        config.hostname = pod_hostname(pod, node.cluster_domain)[0]
    seen: set[tuple[int, int, int, str]] = set()
    for container in pod.containers:
        for port in container.ports:
            protocol = api_pb2.Protocol.Value(port.protocol)
            key = (int(protocol), port.container_port, port.host_port, port.host_ip)
            if key not in seen:
                seen.add(key)
                config.port_mappings.append(api_pb2.PortMapping(
                    protocol=port.protocol, container_port=port.container_port, host_port=port.host_port,
                    host_ip=port.host_ip))
    linux = config.linux
    linux.cgroup_parent = pod_cgroup_parent(pod, node)
    linux.sysctls.update(pod.security_context.sysctls)
    sc = linux.security_context
    sc.namespace_options.CopyFrom(namespace_options(pod))
    sc.privileged = any(c.security_context.privileged for c in (*pod.init_containers, *pod.containers))
    sc.seccomp.CopyFrom(_seccomp(pod.security_context.seccomp_profile, node))
    if pod.security_context.run_as_user is not None:
        sc.run_as_user.value = pod.security_context.run_as_user
    if pod.security_context.run_as_group is not None:
        sc.run_as_group.value = pod.security_context.run_as_group
    sc.supplemental_groups.extend(_supplemental_groups(pod))
    return config


def _fnv32a(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def container_hash(container: Container) -> str:
    """pkg/kubelet/container/helpers.go HashContainer: fnv-32a of the spec, in hex."""
    spec = json.dumps(dataclasses.asdict(container), sort_keys=True, default=str)
    return format(_fnv32a(spec.encode()), "x")


def _ports_json(container: Container) -> str:
    ports = []
    for port in container.ports:
        item: dict[str, Any] = {}
        if port.name:
            item["name"] = port.name
        if port.host_port:
            item["hostPort"] = port.host_port
        item["containerPort"] = port.container_port
        item["protocol"] = port.protocol
        if port.host_ip:
            item["hostIP"] = port.host_ip
        ports.append(item)
    return json.dumps(ports, separators=(",", ":"))


def container_labels(pod: Pod, container: Container) -> dict[str, str]:
    """labels.go newContainerLabels."""
    return {POD_NAME_LABEL: pod.name, POD_NAMESPACE_LABEL: pod.namespace, POD_UID_LABEL: pod.uid,
            CONTAINER_NAME_LABEL: container.name}


def container_annotations(pod: Pod, container: Container, restart_count: int) -> dict[str, str]:
    """labels.go newContainerAnnotations: what kubelet needs to kill the container without the pod spec
    (io.kubernetes.pod.deletionGracePeriod only exists for pods created while being deleted: never here)."""
    annotations = {CONTAINER_HASH: container_hash(container), RESTART_COUNT: str(restart_count),
                   TERMINATION_MESSAGE_PATH: container.termination_message_path,
                   TERMINATION_MESSAGE_POLICY: "File",
                   TERMINATION_GRACE: str(pod.termination_grace_period_seconds)}
    if container.pre_stop is not None:
        annotations[PRE_STOP_HANDLER] = json.dumps({"exec": {"command": list(container.pre_stop.command)}},
                                                   separators=(",", ":"))
    if container.ports:
        annotations[CONTAINER_PORTS] = _ports_json(container)
    return annotations


def expand(text: str, env: Mapping[str, str]) -> str:
    """third_party/forked/golang/expansion Expand: $(VAR) from env, $$ is a literal $, unknown refs stay."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            if text[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if text[i + 1] == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2:end]
                    out.append(env[name] if name in env else text[i:end + 1])
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def container_env(pod: Pod, container: Container, pod_ip: str, node: Node) -> list[tuple[str, str]]:
    """pkg/kubelet/kubelet_pods.go makeEnvironmentVariables: in spec order, each value expanded with
    the variables before it; fieldRef from the downward API. No service links (there is no cluster)."""
    fields = {"metadata.name": pod.name, "metadata.namespace": pod.namespace, "metadata.uid": pod.uid,
              "spec.nodeName": node.node_name, "status.podIP": pod_ip, "status.hostIP": node.node_ip}
    values: dict[str, str] = {}
    for var in container.env:
        values[var.name] = fields[var.field_ref] if var.field_ref else expand(var.value, values)
    return list(values.items())


def linux_resources(pod: Pod, container: Container, node: Node) -> api_pb2.LinuxContainerResources:
    """kuberuntime_container_linux.go generateLinuxContainerResources / calculateLinuxResources,
    qos/policy.go GetContainerOOMScoreAdjust, cm GetHugepageLimitsFromResources."""
    res = container.resources
    cpu_request, cpu_limit = res.milli_cpu("requests") or 0, res.milli_cpu("limits") or 0
    milli = cpu_limit if cpu_request == 0 and cpu_limit else cpu_request
    shares = MIN_SHARES if milli == 0 else min(max(milli * SHARES_PER_CPU // 1000, MIN_SHARES), MAX_SHARES)
    out = api_pb2.LinuxContainerResources(cpu_shares=shares,
                                          oom_score_adj=oom_score_adj(pod, container, node))
    if cpu_limit:
        out.cpu_period = QUOTA_PERIOD
        out.cpu_quota = max(cpu_limit * QUOTA_PERIOD // 1000, MIN_QUOTA)
    memory_limit = res.memory("limits")
    if memory_limit:
        out.memory_limit_in_bytes = memory_limit
    for size in node.hugepage_sizes:
        limit = res.limits.get(f"hugepages-{size[:-1]}i", Decimal(0))
        out.hugepage_limits.append(api_pb2.HugepageLimit(page_size=size, limit=int(limit)))
    return out


def oom_score_adj(pod: Pod, container: Container, node: Node) -> int:
    """pkg/kubelet/qos/policy.go GetContainerOOMScoreAdjust."""
    qos = qos_class(pod)
    if qos == "Guaranteed":
        return GUARANTEED_OOM_SCORE_ADJ
    if qos == "BestEffort":
        return BESTEFFORT_OOM_SCORE_ADJ
    request = container.resources.memory("requests") or 0
    if not node.memory_capacity:
        return BESTEFFORT_OOM_SCORE_ADJ - 1
    adj = 1000 - (1000 * request) // node.memory_capacity
    if adj < 1000 + GUARANTEED_OOM_SCORE_ADJ:
        return 1000 + GUARANTEED_OOM_SCORE_ADJ
    return BESTEFFORT_OOM_SCORE_ADJ - 1 if adj == BESTEFFORT_OOM_SCORE_ADJ else adj


def container_security_context(pod: Pod, container: Container, image_user: ImageUser,
                               node: Node) -> api_pb2.LinuxContainerSecurityContext:
    """pkg/kubelet/kuberuntime/security_context.go determineEffectiveSecurityContext (container over pod),
    verifyRunAsNonRoot, and the image user when neither sets one (kuberuntime_container_linux.go)."""
    sc, psc = container.security_context, pod.security_context
    out = api_pb2.LinuxContainerSecurityContext(
        privileged=sc.privileged, readonly_rootfs=sc.read_only_root_filesystem,
        no_new_privs=sc.allow_privilege_escalation is False,
        seccomp=_seccomp(sc.seccomp_profile or psc.seccomp_profile, node),
        supplemental_groups=_supplemental_groups(pod))
    out.namespace_options.CopyFrom(namespace_options(pod))
    out.capabilities.add_capabilities.extend(sc.add_capabilities)
    out.capabilities.drop_capabilities.extend(sc.drop_capabilities)
    if not sc.privileged and sc.proc_mount != "Unmasked":
        out.masked_paths.extend(DEFAULT_MASKED_PATHS)
        out.readonly_paths.extend(DEFAULT_READONLY_PATHS)
    run_as_user = sc.run_as_user if sc.run_as_user is not None else psc.run_as_user
    run_as_group = sc.run_as_group if sc.run_as_group is not None else psc.run_as_group
    non_root = sc.run_as_non_root if sc.run_as_non_root is not None else psc.run_as_non_root
    if run_as_user is not None:
        out.run_as_user.value = run_as_user
    elif image_user.uid is not None:
        out.run_as_user.value = image_user.uid
    elif image_user.username:
        out.run_as_username = image_user.username
    if run_as_group is not None:
        out.run_as_group.value = run_as_group
    if non_root:
        uid = run_as_user if run_as_user is not None else image_user.uid
        if uid is None and image_user.username:
            raise ContainerConfigError(f"container {container.name} has runAsNonRoot and image has "
                                       f"non-numeric user ({image_user.username}), cannot verify user "
                                       "is non-root")
        if not uid:
            raise ContainerConfigError(f"container {container.name} has runAsNonRoot and image will run "
                                       "as root")
    return out


def container_config(pod: Pod, container: Container, *, restart_count: int, image_ref: str,
                     image_user: ImageUser, node: Node, pod_ip: str,
                     mounts: list[api_pb2.Mount]) -> api_pb2.ContainerConfig:
    """pkg/kubelet/kuberuntime/kuberuntime_container.go generateContainerConfig (+ _linux.go)."""
    env = container_env(pod, container, pod_ip, node)
    env_map = dict(env)
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=container.name, attempt=restart_count),
        image=api_pb2.ImageSpec(image=image_ref, user_specified_image=container.image),
        command=[expand(c, env_map) for c in container.command],
        args=[expand(a, env_map) for a in container.args],
        working_dir=container.working_dir,
        envs=[api_pb2.KeyValue(key=k, value=v) for k, v in env],
        labels=container_labels(pod, container),
        annotations=container_annotations(pod, container, restart_count),
        mounts=mounts, log_path=container_log_path(container.name, restart_count),
        stdin=container.stdin, stdin_once=container.stdin_once, tty=container.tty,
        linux=api_pb2.LinuxContainerConfig(
            resources=linux_resources(pod, container, node),
            security_context=container_security_context(pod, container, image_user, node)))


PROPAGATION = {"None": api_pb2.PROPAGATION_PRIVATE, "HostToContainer": api_pb2.PROPAGATION_HOST_TO_CONTAINER,
               "Bidirectional": api_pb2.PROPAGATION_BIDIRECTIONAL}


def container_mounts(container: Container, volume_paths: Mapping[str, str], hosts_file: str,
                     termination_file: str) -> list[api_pb2.Mount]:
    """pkg/kubelet/kubelet_pods.go makeMounts: the volume mounts, then the managed /etc/hosts (unless the
    container mounts its own) and the termination-message file."""
    mounts = []
    for mount in container.volume_mounts:
        host_path = volume_paths[mount.name]
        if mount.sub_path:
            host_path = f"{host_path.rstrip('/')}/{mount.sub_path}"
        mounts.append(api_pb2.Mount(container_path=mount.mount_path, host_path=host_path,
                                    readonly=mount.read_only,
                                    propagation=PROPAGATION[mount.mount_propagation]))
    if hosts_file and not any(m.mount_path == "/etc/hosts" for m in container.volume_mounts):
        mounts.append(api_pb2.Mount(container_path="/etc/hosts", host_path=hosts_file))
    if termination_file:
        mounts.append(api_pb2.Mount(container_path=container.termination_message_path,
                                    host_path=termination_file))
    return mounts


HOSTS_HEADER = "# Kubernetes-managed hosts file.\n"


def managed_hosts(pod: Pod, pod_ips: list[str], node: Node, node_hosts: str) -> str:
    """pkg/kubelet/kubelet_pods.go managedHostsFileContent / nodeHostsFileContent."""
    if pod.host_network:
        return "# Kubernetes-managed hosts file (host network).\n" + node_hosts
    hostname, domain = pod_hostname(pod, node.cluster_domain)
    lines = [HOSTS_HEADER.rstrip("\n"), "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             "fe00::0\tip6-localnet", "fe00::0\tip6-mcastprefix", "fe00::1\tip6-allnodes",
             "fe00::2\tip6-allrouters"]
    for ip in pod_ips:
        lines.append(f"{ip}\t{hostname}.{domain}\t{hostname}" if domain else f"{ip}\t{hostname}")
    return "\n".join(lines) + "\n"
