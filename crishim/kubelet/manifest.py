"""A Pod manifest (YAML, `apiVersion: v1`, `kind: Pod`) parsed into typed, validated values.

Errors name the field by its path (`spec.containers[1].livenessProbe.periodSeconds: ...`). Defaults are
the API server's (pkg/apis/core/v1/defaults.go): restartPolicy Always, dnsPolicy ClusterFirst,
terminationGracePeriodSeconds 30, probe period 10 s / timeout 1 s / thresholds 1 and 3, imagePullPolicy
Always for `:latest` or untagged images and IfNotPresent otherwise, hostPort = containerPort on
hostNetwork pods. Fields that only mean something to a scheduler are accepted and ignored; anything else
unknown is refused, as `kubectl --validate=strict` does.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import yaml


class ManifestError(ValueError):
    """An invalid manifest; the message starts with the field's path."""


T = TypeVar("T")

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

RESTART_POLICIES = ("Always", "OnFailure", "Never")
DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
PROTOCOLS = ("TCP", "UDP", "SCTP")
PROPAGATIONS = ("None", "HostToContainer", "Bidirectional")
HOST_PATH_TYPES = ("", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice",
                   "BlockDevice")
SECCOMP_TYPES = ("RuntimeDefault", "Unconfined", "Localhost")
FIELD_REFS = ("metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName", "status.podIP",
              "status.hostIP")

# Scheduling and API-server fields: meaningless without a cluster, accepted so real manifests load.
IGNORED_POD_FIELDS = frozenset({
    "nodeName", "nodeSelector", "affinity", "tolerations", "schedulerName", "priority",
    "priorityClassName", "preemptionPolicy", "serviceAccountName", "serviceAccount",
    "automountServiceAccountToken", "imagePullSecrets", "enableServiceLinks", "topologySpreadConstraints",
    "readinessGates", "activeDeadlineSeconds"})
IGNORED_META_FIELDS = frozenset({"creationTimestamp", "resourceVersion", "generation", "ownerReferences",
                                 "finalizers", "managedFields", "generateName", "selfLink"})
IGNORED_CONTAINER_FIELDS = frozenset({"resizePolicy", "terminationMessagePolicy"})

_DECIMAL_SUFFIX = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
                   "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
                   "P": Decimal("1e15"), "E": Decimal("1e18")}
_BINARY_SUFFIX = {f"{s}i": Decimal(1024) ** (i + 1) for i, s in enumerate("KMGTPE")}
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
                       r"((?:[eE][+-]?[0-9]+)|[KMGTPE]i|[numkMGTPE])?$")


def parse_quantity(value: Any, path: str) -> Decimal:
    """A resource.Quantity (`500m`, `64Mi`, `1.5`, `1e3`) as an exact number."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ManifestError(f"{path}: expected a quantity such as 500m or 64Mi, got {value!r}")
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise ManifestError(f"{path}: {text!r} is not a quantity (e.g. 500m, 0.5, 64Mi, 1G)")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if suffix[:1] in ("e", "E"):
            result = Decimal(number + suffix)
        elif suffix in _BINARY_SUFFIX:
            result = Decimal(number) * _BINARY_SUFFIX[suffix]
        elif suffix in _DECIMAL_SUFFIX:
            result = Decimal(number) * _DECIMAL_SUFFIX[suffix]
        else:
            raise ManifestError(f"{path}: unknown quantity suffix {suffix!r}")
    except InvalidOperation as exc:
        raise ManifestError(f"{path}: {text!r} is not a quantity") from exc
    if result < 0:
        raise ManifestError(f"{path}: must not be negative, got {text!r}")
    if not result.is_finite() or result > Decimal(2) ** 63:
        raise ManifestError(f"{path}: {text!r} is too large")
    return result


@dataclass(frozen=True)
class ExecAction:
    command: tuple[str, ...]


@dataclass(frozen=True)
class TCPSocketAction:
    port: int | str  # a number or the name of a container port
    host: str = ""


@dataclass(frozen=True)
class Probe:
    exec: ExecAction | None = None
    tcp_socket: TCPSocketAction | None = None
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3
    termination_grace_period_seconds: int | None = None


@dataclass(frozen=True)
class ContainerPort:
    container_port: int
    name: str = ""
    host_port: int = 0
    protocol: str = "TCP"
    host_ip: str = ""


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str = ""
    field_ref: str = ""  # a FIELD_REFS path when the value comes from the downward API


@dataclass(frozen=True)
class VolumeMount:
    name: str
    mount_path: str
    read_only: bool = False
    sub_path: str = ""
    mount_propagation: str = "None"


@dataclass(frozen=True)
class Resources:
    requests: Mapping[str, Decimal] = field(default_factory=dict)
    limits: Mapping[str, Decimal] = field(default_factory=dict)

    def milli_cpu(self, which: str) -> int | None:
        quantity = (self.requests if which == "requests" else self.limits).get("cpu")
        return None if quantity is None else math.ceil(quantity * 1000)

    def memory(self, which: str) -> int | None:
        quantity = (self.requests if which == "requests" else self.limits).get("memory")
        return None if quantity is None else math.ceil(quantity)


@dataclass(frozen=True)
class SeccompProfile:
    type: str
    localhost_profile: str = ""


@dataclass(frozen=True)
class SecurityContext:
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool | None = None
    privileged: bool = False
    read_only_root_filesystem: bool = False
    allow_privilege_escalation: bool | None = None
    add_capabilities: tuple[str, ...] = ()
    drop_capabilities: tuple[str, ...] = ()
    seccomp_profile: SeccompProfile | None = None
    proc_mount: str = "Default"


@dataclass(frozen=True)
class PodSecurityContext:
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool | None = None
    supplemental_groups: tuple[int, ...] = ()
    fs_group: int | None = None
    sysctls: Mapping[str, str] = field(default_factory=dict)
    seccomp_profile: SeccompProfile | None = None


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    image_pull_policy: str = "IfNotPresent"
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    env: tuple[EnvVar, ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    resources: Resources = field(default_factory=Resources)
    volume_mounts: tuple[VolumeMount, ...] = ()
    security_context: SecurityContext = field(default_factory=SecurityContext)
    liveness_probe: Probe | None = None
    readiness_probe: Probe | None = None
    startup_probe: Probe | None = None
    post_start: ExecAction | None = None
    pre_stop: ExecAction | None = None
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    termination_message_path: str = "/dev/termination-log"


@dataclass(frozen=True)
class Volume:
    name: str
    empty_dir_medium: str | None = None  # "" or "Memory" for an emptyDir
    size_limit: int | None = None
    host_path: str | None = None
    host_path_type: str = ""


@dataclass(frozen=True)
class DNSConfig:
    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    uid: str
    containers: tuple[Container, ...]
    init_containers: tuple[Container, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    restart_policy: str = "Always"
    host_network: bool = False
    host_pid: bool = False
    host_ipc: bool = False
    share_process_namespace: bool = False
    dns_policy: str = "ClusterFirst"
    dns_config: DNSConfig | None = None
    hostname: str = ""
    subdomain: str = ""
    termination_grace_period_seconds: int = 30
    volumes: tuple[Volume, ...] = ()
    security_context: PodSecurityContext = field(default_factory=PodSecurityContext)
    runtime_class_name: str = ""

    def volume(self, name: str) -> Volume:
        return next(v for v in self.volumes if v.name == name)

    def container(self, name: str) -> Container:
        for c in (*self.init_containers, *self.containers):
            if c.name == name:
                return c
        raise KeyError(name)


class _Fields:
    """One mapping of the manifest being read: typed getters that know the path, and unknown-key checks."""

    def __init__(self, data: Any, path: str, ignored: frozenset[str] = frozenset()) -> None:
        if not isinstance(data, dict):
            raise ManifestError(f"{path or 'manifest'}: expected a mapping, got {_kind(data)}")
        self.data: dict[Any, Any] = data
        self.path = path
        self.used: set[str] = set(ignored)

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def get(self, key: str, convert: Callable[[Any, str], T], default: T) -> T:
        value = self.raw(key)
        return default if value is None else convert(value, self.at(key))

    def required(self, key: str, convert: Callable[[Any, str], T]) -> T:
        value = self.raw(key)
        if value is None or value == "":
            raise ManifestError(f"{self.at(key)}: required")
        return convert(value, self.at(key))

    def sub(self, key: str, ignored: frozenset[str] = frozenset()) -> _Fields | None:
        value = self.raw(key)
        return None if value is None else _Fields(value, self.at(key), ignored)

    def items(self, key: str) -> list[tuple[str, Any]]:
        value = self.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ManifestError(f"{self.at(key)}: expected a list, got {_kind(value)}")
        return [(f"{self.at(key)}[{i}]", item) for i, item in enumerate(value)]

    def done(self) -> None:
        unknown = sorted(str(k) for k in self.data if k not in self.used)
        if unknown:
            raise ManifestError(f"{self.at(unknown[0])}: unknown or unsupported field")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _str(value: Any, path: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ManifestError(f"{path}: expected a string, got {_kind(value)}")
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        raise ManifestError(f"{path}: must not contain NUL")
    return text


def _int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(f"{path}: expected an integer, got {value!r}")
    return value


def _nonneg(value: Any, path: str) -> int:
    number = _int(value, path)
    if number < 0:
        raise ManifestError(f"{path}: must be >= 0, got {number}")
    return number


def _positive(value: Any, path: str) -> int:
    number = _int(value, path)
    if number < 1:
        raise ManifestError(f"{path}: must be >= 1, got {number}")
    return number


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ManifestError(f"{path}: expected true or false, got {value!r}")
    return value


def _strs(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ManifestError(f"{path}: expected a list of strings, got {_kind(value)}")
    return tuple(_str(v, f"{path}[{i}]") for i, v in enumerate(value))


def _str_map(value: Any, path: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ManifestError(f"{path}: expected a mapping of strings, got {_kind(value)}")
    return {_str(k, path): _str(v, f"{path}.{k}") for k, v in value.items()}


def _one_of(choices: tuple[str, ...]) -> Callable[[Any, str], str]:
    def convert(value: Any, path: str) -> str:
        text = _str(value, path)
        if text not in choices:
            listed = ", ".join(c or '""' for c in choices)
            raise ManifestError(f"{path}: {text!r} is not one of {listed}")
        return text
    return convert


def _matching(pattern: re.Pattern[str], what: str, limit: int) -> Callable[[Any, str], str]:
    def convert(value: Any, path: str) -> str:
        text = _str(value, path)
        if len(text) > limit or not pattern.match(text):
            raise ManifestError(f"{path}: {text!r} is not a valid {what} (at most {limit} characters)")
        return text
    return convert


_label = _matching(DNS_LABEL, "DNS-1123 label (lower case letters, digits, '-')", 63)
_subdomain = _matching(DNS_SUBDOMAIN, "DNS-1123 subdomain (lower case letters, digits, '-', '.')", 253)


def _port(value: Any, path: str) -> int:
    number = _int(value, path)
    if not 1 <= number <= 65535:
        raise ManifestError(f"{path}: must be between 1 and 65535, got {number}")
    return number


def _abs_path(value: Any, path: str) -> str:
    text = _str(value, path)
    if not text.startswith("/"):
        raise ManifestError(f"{path}: must be an absolute path, got {text!r}")
    return text


def _exec(f: _Fields) -> ExecAction:
    command = f.required("command", _strs)
    f.done()
    if not command:
        raise ManifestError(f"{f.at('command')}: required")
    return ExecAction(command)


def _handler(f: _Fields) -> tuple[ExecAction | None, TCPSocketAction | None]:
    for unsupported in ("httpGet", "grpc", "sleep"):
        if f.data.get(unsupported) is not None:
            raise ManifestError(f"{f.at(unsupported)}: not supported (crishim pod runs exec and tcpSocket "
                                "handlers)")
    action = f.sub("exec")
    tcp = f.sub("tcpSocket")
    if (action is None) == (tcp is None):
        raise ManifestError(f"{f.path}: exactly one of exec or tcpSocket is required")
    tcp_action = None
    if tcp is not None:
        raw = tcp.raw("port")
        if raw is None:
            raise ManifestError(f"{tcp.at('port')}: required")
        port: int | str = (_port(raw, tcp.at("port")) if isinstance(raw, int) and not isinstance(raw, bool)
                           else _matching(PORT_NAME, "port name", 15)(raw, tcp.at("port")))
        tcp_action = TCPSocketAction(port=port, host=tcp.get("host", _str, ""))
        tcp.done()
    return (_exec(action) if action is not None else None), tcp_action


def _probe(f: _Fields, kind: str) -> Probe:
    exec_action, tcp = _handler(f)
    probe = Probe(
        exec=exec_action, tcp_socket=tcp,
        initial_delay_seconds=f.get("initialDelaySeconds", _nonneg, 0),
        period_seconds=f.get("periodSeconds", _positive, 10),
        timeout_seconds=f.get("timeoutSeconds", _positive, 1),
        success_threshold=f.get("successThreshold", _positive, 1),
        failure_threshold=f.get("failureThreshold", _positive, 3),
        termination_grace_period_seconds=f.get("terminationGracePeriodSeconds", _positive, None))
    f.done()
    if kind != "readiness" and probe.success_threshold != 1:
        raise ManifestError(f"{f.at('successThreshold')}: must be 1 for {kind} probes")
    if kind == "readiness" and probe.termination_grace_period_seconds is not None:
        raise ManifestError(f"{f.at('terminationGracePeriodSeconds')}: not allowed on readiness probes")
    return probe


def _seccomp(f: _Fields | None) -> SeccompProfile | None:
    if f is None:
        return None
    profile = SeccompProfile(f.required("type", _one_of(SECCOMP_TYPES)), f.get("localhostProfile", _str, ""))
    f.done()
    if (profile.type == "Localhost") != bool(profile.localhost_profile):
        raise ManifestError(f"{f.at('localhostProfile')}: required with type Localhost and only then")
    return profile


def _security_context(f: _Fields | None) -> SecurityContext:
    if f is None:
        return SecurityContext()
    caps = f.sub("capabilities")
    add: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    if caps is not None:
        add, drop = caps.get("add", _strs, add), caps.get("drop", _strs, drop)
        caps.done()
    context = SecurityContext(
        run_as_user=f.get("runAsUser", _nonneg, None), run_as_group=f.get("runAsGroup", _nonneg, None),
        run_as_non_root=f.get("runAsNonRoot", _bool, None), privileged=f.get("privileged", _bool, False),
        read_only_root_filesystem=f.get("readOnlyRootFilesystem", _bool, False),
        allow_privilege_escalation=f.get("allowPrivilegeEscalation", _bool, None),
        add_capabilities=add, drop_capabilities=drop, seccomp_profile=_seccomp(f.sub("seccompProfile")),
        proc_mount=f.get("procMount", _one_of(("Default", "Unmasked")), "Default"))
    f.done()
    if context.privileged and context.allow_privilege_escalation is False:
        raise ManifestError(f"{f.at('allowPrivilegeEscalation')}: cannot be false when privileged is true")
    return context


def _pod_security_context(f: _Fields | None) -> PodSecurityContext:
    if f is None:
        return PodSecurityContext()
    sysctls = {}
    for path, item in f.items("sysctls"):
        s = _Fields(item, path)
        sysctls[s.required("name", _str)] = s.get("value", _str, "")
        s.done()
    context = PodSecurityContext(
        run_as_user=f.get("runAsUser", _nonneg, None), run_as_group=f.get("runAsGroup", _nonneg, None),
        run_as_non_root=f.get("runAsNonRoot", _bool, None),
        supplemental_groups=tuple(_nonneg(v, p) for p, v in f.items("supplementalGroups")),
        fs_group=f.get("fsGroup", _nonneg, None), sysctls=sysctls,
        seccomp_profile=_seccomp(f.sub("seccompProfile")))
    f.done()
    return context


def _resources(f: _Fields | None) -> Resources:
    if f is None:
        return Resources()

    def amounts(key: str) -> dict[str, Decimal]:
        sub = f.sub(key)
        if sub is None:
            return {}
        found = {str(name): parse_quantity(value, sub.at(str(name))) for name, value in sub.data.items()}
        for name in found:
            if name not in ("cpu", "memory", "ephemeral-storage") and not name.startswith("hugepages-"):
                raise ManifestError(f"{sub.at(name)}: unsupported resource (cpu, memory, ephemeral-storage, "
                                    "hugepages-<size>)")
        return found

    limits, requests = amounts("limits"), amounts("requests")
    f.done()
    for name, limit in limits.items():
        requests.setdefault(name, limit)  # an unset request defaults to the limit
        if requests[name] > limit:
            raise ManifestError(f"{f.at('requests')}.{name}: must be less than or equal to the {name} limit")
    return Resources(requests=requests, limits=limits)


def _env(path: str, item: Any) -> EnvVar:
    f = _Fields(item, path)
    name = f.required("name", _str)
    if not ENV_NAME.match(name):
        raise ManifestError(f"{f.at('name')}: {name!r} is not a valid environment variable name")
    value = f.get("value", _str, "")
    field_ref = ""
    source = f.sub("valueFrom")
    if source is not None:
        ref = source.sub("fieldRef", frozenset({"apiVersion"}))
        if ref is None:
            raise ManifestError(f"{source.path}: only fieldRef is supported")
        field_ref = ref.required("fieldPath", _one_of(FIELD_REFS))
        ref.done()
        source.done()
        if value:
            raise ManifestError(f"{f.at('valueFrom')}: may not be set with value")
    f.done()
    return EnvVar(name, value, field_ref)


def _container_port(path: str, item: Any, host_network: bool) -> ContainerPort:
    f = _Fields(item, path)
    container_port = f.required("containerPort", _port)
    host_port = f.get("hostPort", _port, 0)
    if host_network:
        if host_port and host_port != container_port:
            raise ManifestError(f"{f.at('hostPort')}: must equal containerPort on a hostNetwork pod")
        host_port = container_port  # the API server's defaulting for hostNetwork pods
    port = ContainerPort(container_port=container_port,
                         name=f.get("name", _matching(PORT_NAME, "port name", 15), ""), host_port=host_port,
                         protocol=f.get("protocol", _one_of(PROTOCOLS), "TCP"),
                         host_ip=f.get("hostIP", _str, ""))
    f.done()
    return port


def _lifecycle(f: _Fields | None) -> tuple[ExecAction | None, ExecAction | None]:
    if f is None:
        return None, None
    hooks: list[ExecAction | None] = []
    for key in ("postStart", "preStop"):
        sub = f.sub(key)
        if sub is None:
            hooks.append(None)
            continue
        action, tcp = _handler(sub)
        sub.done()
        if tcp is not None:
            raise ManifestError(f"{sub.at('tcpSocket')}: not supported for lifecycle hooks")
        hooks.append(action)
    f.done()
    return hooks[0], hooks[1]


def default_pull_policy(image: str) -> str:
    """pkg/apis/core/v1/defaults.go SetDefaults_Container: Always for :latest or untagged images."""
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    tag = last.rsplit(":", 1)[1] if ":" in last else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def _container(path: str, item: Any, host_network: bool, volumes: set[str], init: bool) -> Container:
    f = _Fields(item, path, IGNORED_CONTAINER_FIELDS)
    name = f.required("name", _label)
    image = f.required("image", _str)
    probes: dict[str, Probe | None] = {}
    for kind in ("liveness", "readiness", "startup"):
        sub = f.sub(f"{kind}Probe")
        probes[kind] = None if sub is None else _probe(sub, kind)
        if init and sub is not None:
            raise ManifestError(f"{sub.path}: not allowed on init containers")
    post_start, pre_stop = _lifecycle(f.sub("lifecycle"))
    mounts = []
    for mount_path, mount in f.items("volumeMounts"):
        m = _Fields(mount, mount_path)
        volume_mount = VolumeMount(name=m.required("name", _str),
                                   mount_path=m.required("mountPath", _abs_path),
                                   read_only=m.get("readOnly", _bool, False),
                                   sub_path=m.get("subPath", _str, ""),
                                   mount_propagation=m.get("mountPropagation", _one_of(PROPAGATIONS), "None"))
        m.done()
        if volume_mount.name not in volumes:
            raise ManifestError(f"{m.at('name')}: no volume named {volume_mount.name!r} in spec.volumes")
        if volume_mount.sub_path.startswith("/") or ".." in volume_mount.sub_path.split("/"):
            raise ManifestError(f"{m.at('subPath')}: must be a relative path without '..'")
        mounts.append(volume_mount)
    container = Container(
        name=name, image=image,
        image_pull_policy=f.get("imagePullPolicy", _one_of(PULL_POLICIES), default_pull_policy(image)),
        command=f.get("command", _strs, ()), args=f.get("args", _strs, ()),
        working_dir=f.get("workingDir", _abs_path, ""),
        env=tuple(_env(p, v) for p, v in f.items("env")),
        ports=tuple(_container_port(p, v, host_network) for p, v in f.items("ports")),
        resources=_resources(f.sub("resources")), volume_mounts=tuple(mounts),
        security_context=_security_context(f.sub("securityContext")),
        liveness_probe=probes["liveness"], readiness_probe=probes["readiness"],
        startup_probe=probes["startup"],
        post_start=post_start, pre_stop=pre_stop, stdin=f.get("stdin", _bool, False),
        stdin_once=f.get("stdinOnce", _bool, False), tty=f.get("tty", _bool, False),
        termination_message_path=f.get("terminationMessagePath", _abs_path, "/dev/termination-log"))
    f.done()
    return container


def _volume(path: str, item: Any) -> Volume:
    f = _Fields(item, path)
    name = f.required("name", _label)
    empty, host = f.sub("emptyDir"), f.sub("hostPath")
    if (empty is None) == (host is None):
        for other in f.data:
            if other not in ("name", "emptyDir", "hostPath"):
                raise ManifestError(f"{f.at(str(other))}: unsupported volume type "
                                    "(emptyDir and hostPath only)")
        raise ManifestError(f"{path}: exactly one of emptyDir or hostPath is required")
    f.done()
    if empty is not None:
        medium = empty.get("medium", _one_of(("", "Memory")), "")
        size = empty.get("sizeLimit", parse_quantity, None)
        empty.done()
        return Volume(name=name, empty_dir_medium=medium,
                      size_limit=None if size is None else math.ceil(size))
    assert host is not None
    volume = Volume(name=name, host_path=host.required("path", _abs_path),
                    host_path_type=host.get("type", _one_of(HOST_PATH_TYPES), ""))
    host.done()
    return volume


def _dns_config(f: _Fields | None) -> DNSConfig | None:
    if f is None:
        return None
    options = []
    for path, item in f.items("options"):
        o = _Fields(item, path)
        options.append((o.required("name", _str), o.get("value", _str, None)))
        o.done()
    config = DNSConfig(nameservers=f.get("nameservers", _strs, ()), searches=f.get("searches", _strs, ()),
                       options=tuple(options))
    f.done()
    if len(config.nameservers) > 3:
        raise ManifestError(f"{f.at('nameservers')}: at most 3 nameservers, got {len(config.nameservers)}")
    return config


def parse_pod(data: Any) -> Pod:
    """Validate one decoded manifest document and return the Pod it describes."""
    top = _Fields(data, "", frozenset({"status"}))
    api_version = top.required("apiVersion", _str)
    kind = top.required("kind", _str)
    if (api_version, kind) != ("v1", "Pod"):
        raise ManifestError(f"kind: expected apiVersion v1 and kind Pod, got {api_version} {kind}")
    meta = top.sub("metadata", IGNORED_META_FIELDS)
    if meta is None:
        raise ManifestError("metadata: required")
    spec = top.sub("spec", IGNORED_POD_FIELDS)
    if spec is None:
        raise ManifestError("spec: required")
    top.done()
    name = meta.required("name", _subdomain)
    namespace = meta.get("namespace", _label, "default")
    uid = meta.get("uid", _str, "") or str(uuid.uuid4())
    empty: dict[str, str] = {}
    labels = meta.get("labels", _str_map, empty)
    annotations = meta.get("annotations", _str_map, empty)
    meta.done()

    host_network = spec.get("hostNetwork", _bool, False)
    volumes = tuple(_volume(p, v) for p, v in spec.items("volumes"))
    names = [v.name for v in volumes]
    if len(set(names)) != len(names):
        raise ManifestError(f"spec.volumes: duplicate name {next(n for n in names if names.count(n) > 1)!r}")
    volume_names = set(names)
    containers = tuple(_container(p, v, host_network, volume_names, False)
                       for p, v in spec.items("containers"))
    if not containers:
        raise ManifestError("spec.containers: at least one container is required")
    init = tuple(_container(p, v, host_network, volume_names, True) for p, v in spec.items("initContainers"))
    seen: set[str] = set()
    for path, c in [*((f"spec.initContainers[{i}]", c) for i, c in enumerate(init)),
                    *((f"spec.containers[{i}]", c) for i, c in enumerate(containers))]:
        if c.name in seen:
            raise ManifestError(f"{path}.name: duplicate container name {c.name!r}")
        seen.add(c.name)
    host_ports: set[tuple[int, str, str]] = set()
    for i, c in enumerate(containers):
        for j, port in enumerate(c.ports):
            key = (port.host_port, port.protocol, port.host_ip)
            if port.host_port and key in host_ports:
                raise ManifestError(f"spec.containers[{i}].ports[{j}].hostPort: "
                                    f"{port.host_port}/{port.protocol} is already used in this pod")
            host_ports.add(key)
    pod = Pod(
        name=name, namespace=namespace, uid=uid, labels=labels, annotations=annotations,
        containers=containers, init_containers=init,
        restart_policy=spec.get("restartPolicy", _one_of(RESTART_POLICIES), "Always"),
        host_network=host_network, host_pid=spec.get("hostPID", _bool, False),
        host_ipc=spec.get("hostIPC", _bool, False),
        share_process_namespace=spec.get("shareProcessNamespace", _bool, False),
        dns_policy=spec.get("dnsPolicy", _one_of(DNS_POLICIES), "ClusterFirst"),
        dns_config=_dns_config(spec.sub("dnsConfig")),
        hostname=spec.get("hostname", _label, ""), subdomain=spec.get("subdomain", _label, ""),
        termination_grace_period_seconds=spec.get("terminationGracePeriodSeconds", _nonneg, 30),
        volumes=volumes, security_context=_pod_security_context(spec.sub("securityContext")),
        runtime_class_name=spec.get("runtimeClassName", _subdomain, ""))
    spec.done()
    if pod.dns_policy == "None" and not (pod.dns_config and pod.dns_config.nameservers):
        raise ManifestError("spec.dnsConfig.nameservers: required when dnsPolicy is None")
    if pod.host_pid and pod.share_process_namespace:
        raise ManifestError("spec.shareProcessNamespace: may not be set with hostPID")
    return pod


def load_pod(text: str) -> Pod:
    """Parse a YAML (or JSON) manifest holding exactly one Pod."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(f"manifest: not valid YAML: {exc}") from exc
    if len(documents) != 1:
        raise ManifestError(f"manifest: expected exactly one document, got {len(documents)}")
    return parse_pod(documents[0])
