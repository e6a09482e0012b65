"""The pod's /etc files (hostname, hosts, resolv.conf) and its /dev/shm, prepared for containers to mount."""

from __future__ import annotations

from pathlib import Path

from crishim.sandbox.model import DNSConfig, Sandbox
from crishim.sandbox.namespaces import mount, unmount

HOST_HOSTS = Path("/etc/hosts")
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
SHM_OPTIONS = "mode=1777,size=65536k"
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8


def resolv_conf(dns: DNSConfig) -> str:
    lines = [f"nameserver {server}" for server in dns.servers]
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def default_hosts(hostname: str) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if hostname:
        lines.append(f"127.0.1.1\t{hostname}")
    return "\n".join(lines) + "\n"


def write_pod_files(sandbox: Sandbox) -> None:
    """Blocking; run off the event loop. Host-network pods see the node's own files, as in kubelet."""
    spec = sandbox.spec
    root = Path(sandbox.dir)
    root.mkdir(parents=True, exist_ok=True)
    hostname = sandbox.hostname
    (root / "hostname").write_text(hostname + "\n")
    if spec.host_network and HOST_HOSTS.exists():
        (root / "hosts").write_bytes(HOST_HOSTS.read_bytes())
    else:
        (root / "hosts").write_text(default_hosts(hostname))
    if spec.dns is not None and (spec.dns.servers or spec.dns.searches or spec.dns.options):
        (root / "resolv.conf").write_text(resolv_conf(spec.dns))
    elif HOST_RESOLV_CONF.exists():
        (root / "resolv.conf").write_bytes(HOST_RESOLV_CONF.read_bytes())
    else:
        (root / "resolv.conf").write_text("")
    shm = Path(sandbox.shm_path)
    shm.mkdir(exist_ok=True)
    if not spec.host_ipc:
        mount("shm", str(shm), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, SHM_OPTIONS)


def release_pod_files(sandbox: Sandbox) -> None:
    unmount(sandbox.shm_path)
