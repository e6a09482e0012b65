"""The Debian containernetworking-plugins (1.1.1) driven through the library, in test nodes."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from cnitest_node import Node

from cni import CNIError, NetworkConfigList, Result, RuntimeConf

pytestmark = pytest.mark.root

MakeNet = Callable[..., NetworkConfigList]

# Left behind by design by every DEL (machine notes): shared hostport chains and their jumps,
# firewall's shared chains. Deleting the node netns removes them.
SHARED = re.compile(
    r"CNI-HOSTPORT-|CNI-FORWARD|CNI-ADMIN|^\*|^COMMIT|^:(PREROUTING|INPUT|OUTPUT|"
    r"POSTROUTING|FORWARD) "
)


def bridge(subnet: str = "10.30.0.0/24", *extra_ranges: str, **kw: Any) -> dict[str, Any]:
    ranges = [[{"subnet": subnet}], *([[{"subnet": r}] for r in extra_ranges])]
    return {
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": True,
        "ipMasq": True,
        "ipam": {"type": "host-local", "ranges": ranges, "routes": [{"dst": "0.0.0.0/0"}]},
        **kw,
    }


def addr(result: Result, family: int = 4) -> str:
    return next(str(i.address.ip) for i in result.ips_of_interface("eth0") if i.address.version == family)


def assert_rules_cleaned(before: list[str], after: list[str], *needles: str) -> None:
    added = [ln for ln in after if ln not in before and not SHARED.search(ln)]
    assert added == [], f"iptables rules left behind: {added}"
    leftovers = [ln for ln in after for n in needles if n in ln]
    assert leftovers == [], f"rules mentioning the pod left behind: {leftovers}"


def ping(node: Node, netns: str, target: str) -> None:
    node.in_pod(netns, "busybox", "ping", "-c", "1", "-W", "5", target)


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
async def test_bridge_host_local_two_pods(node: Node, make_net: MakeNet, version: str) -> None:
    net = make_net("br", version, bridge())
    cfg = node.cni()
    before = node.iptables()
    pods = [node.pod(), node.pod()]
    rts = [RuntimeConf(f"pod{i}", ns, "eth0", args=(("IgnoreUnknown", "1"),)) for i, ns in enumerate(pods)]
    results = [await cfg.add_network_list(net, r) for r in rts]
    ips = [addr(r) for r in results]
    assert len(set(ips)) == 2 and all(ip.startswith("10.30.0.") for ip in ips)
    assert f"inet {ips[0]}/24" in node.in_pod(pods[0], "ip", "-o", "addr", "show", "eth0")
    assert sorted(node.leases("br")) == sorted(ips)
    ping(node, pods[0], ips[1])
    ping(node, pods[1], "10.30.0.1")
    if version != "0.3.1":
        await cfg.check_network_list(net, rts[0])
    for r in rts:
        await cfg.del_network_list(net, r)
    assert "veth" not in node.links()
    assert node.leases("br") == []
    assert_rules_cleaned(before, node.iptables(), ips[0], ips[1], "pod0", "pod1")
    await cfg.del_network_list(net, rts[0])


async def test_dual_stack_bridge(node: Node, make_net: MakeNet) -> None:
    plugin = bridge("10.31.0.0/24", "fd31::/64")
    plugin["ipam"]["routes"].append({"dst": "::/0"})
    net = make_net("ds", "1.0.0", plugin)
    cfg = node.cni()
    pods = [node.pod(), node.pod()]
    results = [await cfg.add_network_list(net, RuntimeConf(f"d{i}", ns, "eth0")) for i, ns in enumerate(pods)]
    v6 = addr(results[1], 6)
    assert v6.startswith("fd31::") and addr(results[0]).startswith("10.31.0.")
    node.in_pod(pods[0], "busybox", "ping6", "-c", "1", "-W", "5", v6)
    await cfg.check_network_list(net, RuntimeConf("d0", pods[0], "eth0"))
    for i, ns in enumerate(pods):
        await cfg.del_network_list(net, RuntimeConf(f"d{i}", ns, "eth0"))
    assert node.leases("ds") == [] and "veth" not in node.links()


async def test_loopback(node: Node, make_net: MakeNet) -> None:
    net = make_net("lo", "1.0.0", {"type": "loopback"})
    cfg = node.cni()
    pod = node.pod()
    rt = RuntimeConf("lo1", pod, "lo")
    await cfg.add_network_list(net, rt)
    assert "UP" in node.in_pod(pod, "ip", "-o", "link", "show", "lo").split("<")[1].split(">")[0]
    await cfg.check_network_list(net, rt)
    await cfg.del_network_list(net, rt)
    await cfg.del_network_list(net, rt)


async def test_ptp_reaches_gateway(node: Node, make_net: MakeNet) -> None:
    net = make_net(
        "ptp",
        "0.4.0",
        {
            "type": "ptp",
            "ipMasq": True,
            "ipam": {"type": "host-local", "subnet": "10.32.0.0/24", "routes": [{"dst": "0.0.0.0/0"}]},
        },
    )
    cfg = node.cni()
    before = node.iptables()
    pod = node.pod()
    rt = RuntimeConf("ptp1", pod, "eth0")
    result = await cfg.add_network_list(net, rt)
    gw = str(result.ips_of_interface("eth0")[0].gateway)
    ping(node, pod, gw)
    await cfg.check_network_list(net, rt)
    await cfg.del_network_list(net, rt)
    assert "veth" not in node.links() and node.leases("ptp") == []
    assert_rules_cleaned(before, node.iptables(), addr(result), "ptp1")
    await cfg.del_network_list(net, rt)


@pytest.mark.parametrize("kind", ["macvlan", "ipvlan"])
async def test_macvlan_ipvlan_on_veth_master(node: Node, make_net: MakeNet, kind: str) -> None:
    # This kernel has neither dummy nor ipvlan built in: a veth end serves as the master.
    node.run("ip", "link", "add", "m0", "type", "veth", "peer", "name", "m1")
    node.run("ip", "link", "set", "m0", "up")
    node.run("ip", "link", "add", "link", "m0", "name", "probe", "type", kind, check=False)
    kernel_has_it = "probe" in node.links()
    node.run("ip", "link", "del", "probe", check=False)
    static = {"type": "static", "addresses": [{"address": "10.33.0.7/24", "gateway": "10.33.0.1"}]}
    net = make_net(kind, "1.0.0", {"type": kind, "master": "m0", "ipam": static})
    cfg = node.cni()
    pod = node.pod()
    rt = RuntimeConf(f"{kind}1", pod, "eth0")
    if not kernel_has_it:
        # Kernels without the link type (this one lacks CONFIG_IPVLAN): a clear error, nothing left.
        with pytest.raises(CNIError, match=f'plugin type="{kind}"'):
            await cfg.add_network_list(net, rt)
        await cfg.del_network_list(net, rt)
        assert "eth0" not in node.in_pod(pod, "ip", "-o", "link")
        return
    result = await cfg.add_network_list(net, rt)
    assert addr(result) == "10.33.0.7"
    assert "inet 10.33.0.7/24" in node.in_pod(pod, "ip", "-o", "addr", "show", "eth0")
    await cfg.check_network_list(net, rt)
    await cfg.del_network_list(net, rt)
    assert "eth0" not in node.in_pod(pod, "ip", "-o", "link")
    await cfg.del_network_list(net, rt)


async def test_portmap_forwards_host_port_and_cleans_up(node: Node, make_net: MakeNet) -> None:
    net = make_net(
        "pm", "1.0.0", bridge("10.34.0.0/24"), {"type": "portmap", "capabilities": {"portMappings": True}}
    )
    cfg = node.cni()
    before = node.iptables()
    pod = node.pod()
    caps = {"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "TCP"}]}
    rt = RuntimeConf("pm1", pod, "eth0", capability_args=caps)
    result = await cfg.add_network_list(net, rt)
    server = (
        "import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
        "s.bind(('0.0.0.0',8080));s.listen();print('ready',flush=True);"
        "c,_=s.accept();c.sendall(b'hello-from-pod');c.close()"
    )
    listener = await asyncio.create_subprocess_exec(
        "ip",
        "netns",
        "exec",
        pod.rsplit("/", 1)[1],
        sys.executable,
        "-c",
        server,
        stdout=subprocess.PIPE,
    )
    try:
        assert listener.stdout is not None
        assert await asyncio.wait_for(listener.stdout.readline(), 10) == b"ready\n"
        client = "import socket;print(socket.create_connection(('10.34.0.1',18080),5).recv(64))"
        assert "hello-from-pod" in node.run(sys.executable, "-c", client)
    finally:
        if listener.returncode is None:
            listener.kill()
        await listener.wait()
    assert any("CNI-DN-" in ln for ln in node.iptables())
    # Debian's portmap 1.1.1 cannot CHECK an attachment with port mappings (plugins#819).
    with pytest.raises(CNIError, match="could not check") as exc:
        await cfg.check_network_list(net, rt)
    assert exc.value.plugin_type == "portmap" and "known portmap defect" in str(exc.value)
    await cfg.del_network_list(net, RuntimeConf("pm1", pod, "eth0"))  # mappings come from cache
    after = node.iptables()
    assert not any("CNI-DN-" in ln for ln in after)
    assert_rules_cleaned(before, after, addr(result), "pm1")
    await cfg.del_network_list(net, rt)


async def test_tuning_sets_sysctl_and_mtu(node: Node, make_net: MakeNet) -> None:
    net = make_net(
        "tun",
        "0.4.0",
        bridge("10.35.0.0/24"),
        {
            "type": "tuning",
            "mtu": 1400,
            "sysctl": {"net.ipv4.conf.eth0.log_martians": "1"},
        },
    )
    cfg = node.cni()
    pod = node.pod()
    rt = RuntimeConf("tun1", pod, "eth0")
    await cfg.add_network_list(net, rt)
    assert "mtu 1400" in node.in_pod(pod, "ip", "-o", "link", "show", "eth0")
    assert node.in_pod(pod, "sysctl", "-n", "net.ipv4.conf.eth0.log_martians").strip() == "1"
    await cfg.check_network_list(net, rt)
    await cfg.del_network_list(net, rt)
    assert node.leases("tun") == []


async def test_bandwidth_shapes_and_check_defect(node: Node, make_net: MakeNet) -> None:
    net = make_net(
        "bw", "1.0.0", bridge("10.36.0.0/24"), {"type": "bandwidth", "capabilities": {"bandwidth": True}}
    )
    cfg = node.cni()
    shaped = RuntimeConf(
        "bw1",
        node.pod(),
        "eth0",
        capability_args={
            "bandwidth": {
                "ingressRate": 1_000_000,
                "ingressBurst": 100_000,
                "egressRate": 1_000_000,
                "egressBurst": 100_000,
            }
        },
    )
    await cfg.add_network_list(net, shaped)
    assert "qdisc tbf" in node.run("ip", "-o", "link", "show", "type", "ifb")
    assert "tbf" in node.run("tc", "qdisc", "show")
    await cfg.check_network_list(net, shaped)
    await cfg.del_network_list(net, shaped)
    assert node.run("ip", "-o", "link", "show", "type", "ifb") == ""

    plain = RuntimeConf("bw2", node.pod(), "eth0")
    await cfg.add_network_list(net, plain)
    # Debian's bandwidth 1.1.1 crashes on CHECK without bandwidth settings.
    with pytest.raises(CNIError) as exc:
        await cfg.check_network_list(net, plain)
    assert exc.value.plugin_type == "bandwidth" and "known bandwidth defect" in str(exc.value)
    await cfg.del_network_list(net, plain)
    assert node.leases("bw") == []


async def test_firewall_rules_added_and_removed(node: Node, make_net: MakeNet) -> None:
    net = make_net("fw", "0.4.0", bridge("10.37.0.0/24"), {"type": "firewall", "backend": "iptables"})
    cfg = node.cni()
    before = node.iptables()
    rt = RuntimeConf("fw1", node.pod(), "eth0")
    ip = addr(await cfg.add_network_list(net, rt))
    assert any(ip in ln and "CNI-FORWARD" in ln for ln in node.iptables())
    await cfg.check_network_list(net, rt)
    await cfg.del_network_list(net, rt)
    assert_rules_cleaned(before, node.iptables(), ip, "fw1")


async def test_del_continues_past_missing_plugin(
    node: Node, make_net: MakeNet, fake_bin: Callable[[str, str], str]
) -> None:
    """Pain point 9: a chained plugin binary vanished; the IPAM owner must still be DELed."""
    extra = fake_bin("meta", 'cat >/dev/null; [ "$CNI_COMMAND" = ADD ] && echo "$PREV"; exit 0')
    net = make_net("pp9", "1.0.0", bridge("10.38.0.0/24"), {"type": "portmap"})
    cfg = node.cni([extra, "/usr/lib/cni"])
    rt = RuntimeConf("pp9", node.pod(), "eth0")
    await cfg.add_network_list(net, rt)
    missing = make_net("pp9", "1.0.0", bridge("10.38.0.0/24"), {"type": "vanished"})
    with pytest.raises(CNIError, match='failed to find plugin "vanished"'):
        await cfg.del_network_list(missing, rt)
    assert node.leases("pp9") == [] and "veth" not in node.links()
    assert cfg.get_cached_result("pp9", rt) is not None
    await cfg.del_network_list(net, rt)
    assert cfg.get_cached_result("pp9", rt) is None


async def test_32_parallel_adds_then_dels(node: Node, make_net: MakeNet) -> None:
    net = make_net("many", "1.0.0", bridge("10.39.0.0/24"))
    cfg = node.cni()
    rts = [RuntimeConf(f"m{i}", node.pod(), "eth0") for i in range(32)]
    results = await asyncio.gather(*(cfg.add_network_list(net, r) for r in rts))
    ips = {addr(r) for r in results}
    assert len(ips) == 32 and sorted(node.leases("many")) == sorted(ips)
    await asyncio.gather(*(cfg.del_network_list(net, r) for r in rts))
    assert node.leases("many") == [] and "veth" not in node.links()
    assert cfg.get_cached_attachments() == []
    assert not any(f'"m{i}"' in ln for ln in node.iptables() for i in range(32))
