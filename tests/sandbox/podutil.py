"""Helpers for sandbox tests: pod configs, and traffic into and out of pod namespaces."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from crishim.api.runtime.v1 import api_pb2
from crishim.store.recordlog import replay
from tests.harness import CrishimServer, TestNode, run

LISTENER = """
import socket, sys
srv = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(8)
print('listening', flush=True)
for _ in range(int(sys.argv[3])):
    conn, _ = srv.accept()
    conn.sendall(b'hello from pod')
    conn.close()
"""

FETCH = """
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(conn.recv(100).decode())
"""


def pod_config(name: str, *, namespace: str = "default", attempt: int = 0,
               host_ports: list[tuple[int, int]] | None = None, host_network: bool = False,
               **fields: Any) -> api_pb2.PodSandboxConfig:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace=namespace, uid=str(uuid.uuid4()),
                                            attempt=attempt),
        labels={"app": name}, **fields)
    for container_port, host_port in host_ports or []:
        config.port_mappings.append(api_pb2.PortMapping(protocol=api_pb2.TCP,
                                                        container_port=container_port,
                                                        host_port=host_port))
    if host_network:
        config.linux.security_context.namespace_options.network = api_pb2.NODE
    return config


def run_pod(server: CrishimServer, config: api_pb2.PodSandboxConfig) -> str:
    return str(server.runtime().RunPodSandbox(
        api_pb2.RunPodSandboxRequest(config=config)).pod_sandbox_id)


def status(server: CrishimServer, sandbox_id: str) -> api_pb2.PodSandboxStatusResponse:
    return server.runtime().PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True))


def info(server: CrishimServer, sandbox_id: str) -> dict[str, Any]:
    return dict(json.loads(status(server, sandbox_id).info["info"]))


def stop_and_remove(server: CrishimServer, sandbox_id: str) -> None:
    rt = server.runtime()
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))


def in_netns(netns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["nsenter", f"--net={netns}", *cmd], check=check, timeout=30)


def addresses(netns: str, ifname: str) -> list[str]:
    data = json.loads(in_netns(netns, "ip", "-j", "addr", "show", "dev", ifname).stdout)
    return [a["local"] for a in data[0]["addr_info"] if a.get("scope") == "global"]


def link_up(netns: str, ifname: str) -> bool:
    data = json.loads(in_netns(netns, "ip", "-j", "link", "show", "dev", ifname).stdout)
    return "UP" in data[0]["flags"]


def listen(netns: str, address: str, port: int, accepts: int = 1) -> subprocess.Popen[str]:
    """A TCP listener inside `netns` that greets each of `accepts` clients and then exits."""
    proc = subprocess.Popen(["nsenter", f"--net={netns}", sys.executable, "-c", LISTENER,
                             address, str(port), str(accepts)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "listening", proc.stderr.read() if proc.stderr else ""
    return proc


def fetch(netns: str, host: str, port: int) -> str:
    return in_netns(netns, sys.executable, "-c", FETCH, host, str(port)).stdout.strip()


def ping(netns: str, address: str) -> bool:
    return in_netns(netns, "busybox", "ping", "-c", "1", "-W", "3", address, check=False).returncode == 0


# Chains the plugins create once per node and never delete (machine-notes: "DEL never removes").
SHARED_CHAINS = ("CNI-HOSTPORT-", "CNI-FORWARD", "CNI-ADMIN")


def pod_rules(rules: str) -> list[str]:
    """iptables rules that belong to some pod (the shared per-node chains are left out)."""
    return [line for line in rules.splitlines()
            if not (any(chain in line for chain in SHARED_CHAINS) and "CNI-DN-" not in line)
            and line not in ("COMMIT", "*nat", "*filter", "*mangle", "*raw")]


def live_records(server: CrishimServer) -> list[str]:
    """Sandbox ids with a live record in the server's record log."""
    log = server.state_dir / "sandboxes.log"
    return sorted(replay(log.read_bytes())[0]) if log.exists() else []


def node_leftovers(node: TestNode, server: CrishimServer) -> dict[str, Any]:
    """Everything a pod can leave behind, to compare before and after."""
    return {
        "veths": sorted(link for link in node.links() if link.startswith("veth")),
        "netns": sorted(p.name for p in server.netns_dir.iterdir()) if server.netns_dir.exists() else [],
        "leases": sorted(server.leases()),
        "cache": sorted(p.name for p in (server.cache_dir / "results").iterdir())
        if (server.cache_dir / "results").exists() else [],
        "records": live_records(server),
        "pod dirs": sorted(p.name for p in (server.root / "run" / "sandboxes").iterdir())
        if (server.root / "run" / "sandboxes").exists() else [],
        "iptables": pod_rules(node.iptables_save()),
        "mounts": [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                   if str(server.root) in line],
    }
