"""Each seed plugin family runs a pod through crishim; the first valid config file is the one used."""

from __future__ import annotations

import ipaddress
from typing import Any

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.harness import CrishimServer, TestNode
from tests.sandbox.podutil import (
    addresses,
    info,
    node_leftovers,
    pod_config,
    run_pod,
    status,
    stop_and_remove,
)

pytestmark = pytest.mark.root


def host_local(subnet: str, **extra: Any) -> dict[str, Any]:
    return {"type": "host-local", "ranges": [[{"subnet": subnet}]], **extra}


NETWORKS: dict[str, dict[str, Any]] = {
    "bridge": {"cniVersion": "0.4.0", "name": "br", "plugins": [
        {"type": "bridge", "bridge": "cbr0", "isGateway": True, "ipam": host_local("10.61.0.0/24")}]},
    "ptp": {"cniVersion": "1.0.0", "name": "ptp", "plugins": [
        {"type": "ptp", "ipMasq": True, "ipam": host_local("10.62.0.0/24")}]},
    "ipvlan": {"cniVersion": "0.3.1", "name": "ipvl", "plugins": [
        {"type": "ipvlan", "master": "master0", "ipam": host_local("10.63.0.0/24")}]},
    "macvlan": {"cniVersion": "1.0.0", "name": "macvl", "plugins": [
        {"type": "macvlan", "master": "master0", "mode": "bridge", "ipam": host_local("10.64.0.0/24")}]},
    "bridge+portmap+tuning+bandwidth": {"cniVersion": "1.0.0", "name": "chain", "plugins": [
        {"type": "bridge", "bridge": "cbr1", "isGateway": True, "ipam": host_local("10.65.0.0/24")},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "0"}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}}]},
}


def kernel_supports(node: TestNode, kind: str) -> bool:
    """This machine's kernel lacks some link types (no dummy, no ipvlan here): probe, don't assume."""
    probe = node.sh("ip", "link", "add", "link", "master0", "name", "probe0", "type", kind, check=False)
    node.sh("ip", "link", "del", "probe0", check=False)
    return probe.returncode == 0


@pytest.mark.parametrize("family", list(NETWORKS))
def test_plugin_family_runs_a_pod(family: str, node: TestNode, server_factory: Any) -> None:
    # A veth end stands in for the node's uplink (the kernel here has no dummy links).
    node.sh("ip", "link", "add", "master0", "type", "veth", "peer", "name", "master0p")
    node.sh("ip", "link", "set", "master0", "up")
    server: CrishimServer = server_factory(network=False)
    server.use_network(NETWORKS[family])
    before = node_leftovers(node, server)
    config = pod_config(family.replace("+", "-"), host_ports=[(80, 18081)])
    config.annotations["kubernetes.io/ingress-bandwidth"] = "10M"
    if family in ("ipvlan", "macvlan") and not kernel_supports(node, family):
        with pytest.raises(grpc.RpcError) as err:
            run_pod(server, config)
        assert f'plugin type="{family}"' in (err.value.details() or "")
        assert node_leftovers(node, server) == before
        return
    sandbox_id = run_pod(server, config)
    st = status(server, sandbox_id).status
    subnet = NETWORKS[family]["plugins"][0]["ipam"]["ranges"][0][0]["subnet"]
    assert ipaddress.ip_address(st.network.ip) in ipaddress.ip_network(subnet)
    details = info(server, sandbox_id)
    assert addresses(details["netnsPath"], "eth0") == [st.network.ip]
    assert [t["plugin"] for t in details["timeline"] if t["verb"] == "ADD"] == \
        [p["type"] for p in NETWORKS[family]["plugins"]]
    stop_and_remove(server, sandbox_id)
    assert node_leftovers(node, server) == before


def test_loopback_only_network(server_factory: Any) -> None:
    server: CrishimServer = server_factory(network=False)
    server.use_network({"cniVersion": "1.0.0", "name": "lo-only", "plugins": [{"type": "loopback"}]})
    # A result without an IP on eth0 cannot serve a pod: the error says so and nothing is left.
    with pytest.raises(grpc.RpcError) as err:
        run_pod(server, pod_config("lo"))
    assert "no IP address for eth0" in (err.value.details() or "")
    assert list(server.netns_dir.iterdir()) == []


def test_only_first_valid_config_is_used(node: TestNode, server_factory: Any) -> None:
    server: CrishimServer = server_factory(network=False)
    (server.conf_dir / "00-broken.conflist").write_text("{not json")
    server.write_network(NETWORKS["bridge"], "20-second.conflist")
    server.use_network(NETWORKS["ptp"], "10-first.conflist")
    sandbox_id = run_pod(server, pod_config("first"))
    assert ipaddress.ip_address(status(server, sandbox_id).status.network.ip) in \
        ipaddress.ip_network("10.62.0.0/24")
    st = server.runtime().Status(api_pb2.StatusRequest(verbose=True))
    import json
    cni = json.loads(st.info["cni"])
    assert cni["network"] == "ptp"
    assert [s["file"].rsplit("/", 1)[-1] for s in cni["skipped"]] == ["00-broken.conflist"]
    stop_and_remove(server, sandbox_id)


def test_dual_stack_pod_reports_both_ips(node: TestNode, server_factory: Any) -> None:
    server: CrishimServer = server_factory(network=False)
    server.use_network({"cniVersion": "1.0.0", "name": "dual", "plugins": [
        {"type": "bridge", "bridge": "cbr6", "isGateway": True, "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.66.0.0/24"}], [{"subnet": "fd00:66::/64"}]]}}]})
    sandbox_id = run_pod(server, pod_config("dual"))
    network = status(server, sandbox_id).status.network
    assert ipaddress.ip_address(network.ip).version == 4
    assert [ipaddress.ip_address(a.ip).version for a in network.additional_ips] == [6]
    stop_and_remove(server, sandbox_id)
