"""UpdateRuntimeConfig's pod CIDR: render a conflist template when no working network exists (R-CFG-1).

The placeholders follow containerd's `conf_template` names so templates carry over:
`{{.PodCIDR}}` (the first CIDR), `{{.PodCIDRRanges}}` (host-local `ranges`, one range set per CIDR, as
JSON) and `{{.Routes}}` (a default route per address family, as JSON).
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from crishim.errors import InvalidArgument
from crishim.limits import shown
from crishim.store import write_bytes_atomic

RENDERED_NAME = "10-crishim-net.conflist"


def parse_pod_cidrs(pod_cidrs: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """kubelet's comma-separated pod CIDRs ("10.244.1.0/24,fd00:1::/64")."""
    networks = []
    for cidr in (c.strip() for c in pod_cidrs.split(",")):
        try:
            if "/" not in cidr:
                raise ValueError("a CIDR needs a prefix length")
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError as exc:
            raise InvalidArgument(
                f"runtime_config.network_config.pod_cidr {shown(cidr)} is not a CIDR: {exc}") from None
    return networks


def render(template: str, pod_cidrs: str) -> str:
    networks = parse_pod_cidrs(pod_cidrs)
    routes = [{"dst": "0.0.0.0/0" if n.version == 4 else "::/0"}
              for n in sorted({n.version: n for n in networks}.values(), key=lambda n: n.version)]
    text = (template.replace("{{.PodCIDRRanges}}", json.dumps([[{"subnet": str(n)}] for n in networks]))
            .replace("{{.Routes}}", json.dumps(routes))
            .replace("{{.PodCIDR}}", str(networks[0]) if networks else ""))
    json.loads(text)  # a template that renders to invalid JSON is a configuration error
    return text


def write_rendered(conf_dir: str, text: str) -> Path:
    """Atomically, so the conf dir watcher never loads a half-written file."""
    target = Path(conf_dir) / RENDERED_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(target, text.encode())
    return target
