"""The /metrics endpoint: Prometheus text that parses, fed by real RPC, CNI and pull observations."""

from __future__ import annotations

import ctypes
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

import cni
from crishim.sandbox.namespaces import CLONE_NEWNET
from crishim.telemetry import (
    MetricsServer,
    observe_cni_call,
    observe_pull,
    observe_recovery,
    observe_rpc,
    parse_address,
    track_states,
)
from crishim.telemetry.endpoint import AddressError
from crishim.threads import run_in_thread

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)


async def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run `fn` on a fresh thread inside network namespace `name`."""

    def body() -> T:
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            assert _libc.setns(fd, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
        finally:
            os.close(fd)
        return fn()

    return await run_in_thread(body)


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    return sock


def _get(port: int, target: str = "/metrics") -> tuple[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    return head.split("\r\n", 1)[0], body


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9090") == ("127.0.0.1", 9090)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("9090", "localhost", "host:port", ":9090", "1.2.3.4:70000"):
        with pytest.raises(AddressError, match="expected host:port"):
            parse_address(bad)


async def test_off_by_default() -> None:
    server = MetricsServer("")
    await server.start()
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.port
    await server.close()


def _conflist(name: str, ipam_dir: Path) -> cni.NetworkConfigList:
    doc = {"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "loopback"},
        {"type": "bridge", "bridge": "cni-tm0", "isGateway": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.252.0.0/24"}]],
                  "dataDir": str(ipam_dir)}},
    ]}
    return cni.parse_network_config_list(json.dumps(doc).encode(), f"<test {name}>")


def _cni_count(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], network: str, plugin: str,
               verb: str) -> float:
    key = ("crishim_cni_operation_duration_seconds_count",
           (("network", network), ("plugin_type", plugin), ("verb", verb)))
    return found.get(key, 0.0)


@pytest.mark.root
async def test_endpoint_exports_rpc_cni_pull_and_state_metrics(
        netns: Callable[[], str], tmp_path: Path) -> None:
    node, pod = netns(), netns()
    network = f"tm{os.urandom(3).hex()}"
    plugins = cni.CNIConfig(["/usr/lib/cni"], cache_dir=str(tmp_path / "cache"),
                            exec_prefix=["nsenter", f"--net=/run/netns/{node}"], observer=observe_cni_call)
    net = _conflist(network, tmp_path / "ipam")
    rt = cni.RuntimeConf(container_id="tm-pod", netns=f"/run/netns/{pod}", ifname="eth0")
    await plugins.add_network_list(net, rt)
    await plugins.del_network_list(net, rt)
    await plugins.del_network_list(net, rt)

    observe_rpc("RunPodSandbox", "OK", 0.2)
    observe_rpc("PodSandboxStatus", "NOT_FOUND", 0.001)
    observe_pull(1.5, 4096)
    with observe_recovery():
        pass
    track_states("sandboxes", lambda: ["READY", "READY", "NOTREADY"])

    server = MetricsServer("127.0.0.1:0")
    await server.start(await in_netns(node, _listener))
    try:
        status, body = await in_netns(node, lambda: _get(server.port))
        missing, _ = await in_netns(node, lambda: _get(server.port, "/other"))
    finally:
        await server.close()
    assert status == "HTTP/1.1 200 OK"
    assert missing == "HTTP/1.1 404 Not Found"
    found = samples(body)
    # One ADD and two DELs of each plugin in the chain, exactly as made.
    for plugin in ("loopback", "bridge"):
        assert _cni_count(found, network, plugin, "ADD") == 1
        assert _cni_count(found, network, plugin, "DEL") == 2
    assert found[("crishim_rpc_duration_seconds_count",
                  (("code", "OK"), ("method", "RunPodSandbox")))] >= 1
    assert found[("crishim_rpc_errors_total",
                  (("code", "NOT_FOUND"), ("method", "PodSandboxStatus")))] >= 1
    assert ("crishim_rpc_errors_total", (("code", "OK"), ("method", "RunPodSandbox"))) not in found
    assert found[("crishim_image_pull_bytes_total", ())] >= 4096
    assert found[("crishim_image_pull_duration_seconds_count", ())] >= 1
    assert ("crishim_recovery_duration_seconds", ()) in found
    assert found[("crishim_sandboxes", (("state", "READY"),))] == 2
    assert found[("crishim_sandboxes", (("state", "NOTREADY"),))] == 1


@pytest.mark.root
async def test_failed_plugin_calls_are_counted_as_errors(netns: Callable[[], str], tmp_path: Path) -> None:
    node = netns()
    network = f"tm{os.urandom(3).hex()}"
    plugins = cni.CNIConfig(["/usr/lib/cni"], cache_dir=str(tmp_path / "cache"),
                            exec_prefix=["nsenter", f"--net=/run/netns/{node}"], observer=observe_cni_call)
    net = _conflist(network, tmp_path / "ipam")
    rt = cni.RuntimeConf(container_id="tm-pod", netns="/run/netns/crishim-tm-missing", ifname="eth0")
    with pytest.raises(cni.CNIError):
        await plugins.add_network_list(net, rt)
    server = MetricsServer("127.0.0.1:0")
    await server.start(await in_netns(node, _listener))
    try:
        _, body = await in_netns(node, lambda: _get(server.port))
    finally:
        await server.close()
    found = samples(body)
    key = (("network", network), ("plugin_type", "loopback"), ("verb", "ADD"))
    assert found[("crishim_cni_operation_errors_total", key)] == 1
    assert found[("crishim_cni_operation_duration_seconds_count", key)] == 1
