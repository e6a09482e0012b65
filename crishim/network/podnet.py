"""Pure translation of a pod's spec into CNI arguments (CNI_ARGS and capability args)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import cni
from crishim.errors import InvalidArgument
from crishim.limits import shown
from crishim.sandbox.model import SandboxSpec

POD_IFNAME = "eth0"
INGRESS_BANDWIDTH = "kubernetes.io/ingress-bandwidth"
EGRESS_BANDWIDTH = "kubernetes.io/egress-bandwidth"
POD_ANNOTATIONS_CAPABILITY = "io.kubernetes.cri.pod-annotations"
# containerd's burst for annotation-driven limits: effectively unlimited.
BANDWIDTH_BURST = 2**32 - 1
MIN_BANDWIDTH = 1_000
MAX_BANDWIDTH = 1_000_000_000_000_000

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_MULTIPLIER = {
    None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


@dataclass(frozen=True)
class Attachment:
    """What a pod's set-up used, so teardown can repeat it exactly."""

    sandbox_id: str
    netns: str
    args: tuple[tuple[str, str], ...]
    capability_args: dict[str, Any]


def parse_bandwidth(annotation: str, value: str) -> int:
    """A Kubernetes quantity in bits per second, bounded like kubelet's (1k … 1P)."""
    match = _QUANTITY.match(value.strip())
    if not match:
        raise InvalidArgument(f"annotation {annotation}: {shown(value)} is not a quantity such as 10M or 1Gi")
    bits = int(float(match.group(1)) * _MULTIPLIER[match.group(2)])
    if not MIN_BANDWIDTH <= bits <= MAX_BANDWIDTH:
        raise InvalidArgument(f"annotation {annotation}: {shown(value)} is outside 1k…1P bits per second")
    return bits


def cni_args(spec: SandboxSpec, sandbox_id: str) -> tuple[tuple[str, str], ...]:
    return cni.kubernetes_args(spec.namespace, spec.name, sandbox_id, spec.uid)


def capability_args(spec: SandboxSpec) -> dict[str, Any]:
    caps: dict[str, Any] = {}
    mappings = [
        {"hostPort": p.host_port, "containerPort": p.container_port,
         "protocol": p.protocol.lower(), "hostIP": p.host_ip}
        for p in spec.port_mappings if p.host_port > 0
    ]
    if mappings:
        caps["portMappings"] = mappings
    bandwidth: dict[str, int] = {}
    if INGRESS_BANDWIDTH in spec.annotations:
        bandwidth["ingressRate"] = parse_bandwidth(INGRESS_BANDWIDTH, spec.annotations[INGRESS_BANDWIDTH])
        bandwidth["ingressBurst"] = BANDWIDTH_BURST
    if EGRESS_BANDWIDTH in spec.annotations:
        bandwidth["egressRate"] = parse_bandwidth(EGRESS_BANDWIDTH, spec.annotations[EGRESS_BANDWIDTH])
        bandwidth["egressBurst"] = BANDWIDTH_BURST
    if bandwidth:
        caps["bandwidth"] = bandwidth
    if spec.dns is not None:
        caps["dns"] = {"servers": spec.dns.servers, "searches": spec.dns.searches,
                       "options": spec.dns.options}
    if spec.cgroup_parent:
        caps["cgroupPath"] = spec.cgroup_parent
    caps[POD_ANNOTATIONS_CAPABILITY] = dict(spec.annotations)
    return caps
