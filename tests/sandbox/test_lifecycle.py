"""The pod lifecycle through the gRPC API, with real plugins inside a test node."""

from __future__ import annotations

import ipaddress
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.harness import CrishimServer, TestNode, poll
from tests.sandbox.podutil import (
    addresses,
    fetch,
    info,
    link_up,
    listen,
    node_leftovers,
    ping,
    pod_config,
    run_pod,
    status,
    stop_and_remove,
)

pytestmark = pytest.mark.root


def test_full_lifecycle_with_traffic(node: TestNode, server: CrishimServer) -> None:
    before = node_leftovers(node, server)
    rt = server.runtime()
    first = run_pod(server, pod_config("web", host_ports=[(8080, 18080), (9090, 0)],
                                       dns_config=api_pb2.DNSConfig(servers=["10.0.0.10"],
                                                                    searches=["svc.local"])))
    second = run_pod(server, pod_config("client"))

    st = status(server, first).status
    assert st.state == api_pb2.SANDBOX_READY
    assert ipaddress.ip_address(st.network.ip) in ipaddress.ip_network("10.99.0.0/16")
    assert st.metadata.name == "web" and st.labels["app"] == "web" and st.created_at > 0
    details = info(server, first)
    netns = details["netnsPath"]
    assert Path(netns).exists()
    assert addresses(netns, "eth0") == [st.network.ip]
    assert link_up(netns, "eth0") and link_up(netns, "lo")
    assert [t["plugin"] for t in details["timeline"]] == ["namespaces", "loopback", "bridge", "portmap"]
    resolv = (Path(details["sandboxDir"]) / "resolv.conf").read_text()
    assert "nameserver 10.0.0.10" in resolv and "search svc.local" in resolv

    other = status(server, second).status.network.ip
    assert other != st.network.ip
    assert ping(info(server, second)["netnsPath"], st.network.ip)

    # hostPort: from the node to its own address and to 127.0.0.1 (critest uses the latter).
    listener = listen(netns, "0.0.0.0", 8080, accepts=3)
    try:
        assert fetch(node.path, st.network.ip, 8080) == "hello from pod"
        gateway = str(ipaddress.ip_network("10.99.0.0/16")[1])
        assert fetch(node.path, gateway, 18080) == "hello from pod"
        node.sh("sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1")
        assert fetch(node.path, "127.0.0.1", 18080) == "hello from pod"
    finally:
        listener.kill()
        listener.wait()
    assert any("18080" in line for line in node_leftovers(node, server)["iptables"])

    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=first))
    assert not Path(netns).exists()
    stopped = status(server, first).status
    assert stopped.state == api_pb2.SANDBOX_NOTREADY and stopped.network.ip == ""
    assert not any("18080" in line for line in node_leftovers(node, server)["iptables"])
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=first))
    rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=first))
    rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=first))
    with pytest.raises(grpc.RpcError) as err:
        status(server, first)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    stop_and_remove(server, second)
    assert node_leftovers(node, server) == before


def test_list_filters_and_prefix(server: CrishimServer) -> None:
    rt = server.runtime()
    a = run_pod(server, pod_config("a"))
    b = run_pod(server, pod_config("b"))
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=b))

    def ids(**filt: object) -> set[str]:
        request = api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(**filt))
        return {item.id for item in rt.ListPodSandbox(request).items}

    assert ids() == {a, b}
    assert ids(id=a[:12]) == {a}
    assert ids(state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY)) == {a}
    assert ids(state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_NOTREADY)) == {b}
    assert ids(label_selector={"app": "b"}) == {b}
    assert ids(label_selector={"app": "nope"}) == set()
    for sandbox_id in (a, b):
        stop_and_remove(server, sandbox_id)


def test_retry_returns_same_id(server: CrishimServer) -> None:
    config = pod_config("retry")
    first = run_pod(server, config)
    assert run_pod(server, config) == first
    config.metadata.attempt = 1
    assert run_pod(server, config) != first
    rt = server.runtime()
    for item in rt.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
        stop_and_remove(server, item.id)


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda c: c.metadata.ClearField("name"), "config.metadata.name"),
    (lambda c: c.metadata.ClearField("namespace"), "config.metadata.namespace"),
    (lambda c: c.metadata.ClearField("uid"), "config.metadata.uid"),
    (lambda c: c.ClearField("metadata"), "config.metadata"),
    (lambda c: c.annotations.update({"kubernetes.io/ingress-bandwidth": "lots"}),
     "kubernetes.io/ingress-bandwidth"),
])
def test_bad_config_is_invalid_argument(server: CrishimServer,
                                        mutate: Callable[[api_pb2.PodSandboxConfig], None],
                                        field: str) -> None:
    config = pod_config("bad")
    mutate(config)
    with pytest.raises(grpc.RpcError) as err:
        run_pod(server, config)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")
    assert list(server.netns_dir.iterdir()) == [] if server.netns_dir.exists() else True


def test_unknown_ids(server: CrishimServer) -> None:
    rt = server.runtime()
    unknown = "0" * 64
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=unknown))
    rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=unknown))
    with pytest.raises(grpc.RpcError) as err:
        status(server, unknown)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert unknown in (err.value.details() or "")


def test_host_network_pod(node: TestNode, server: CrishimServer) -> None:
    sandbox_id = run_pod(server, pod_config("hostnet", host_network=True, hostname="ignored-ok"))
    st = status(server, sandbox_id).status
    assert st.state == api_pb2.SANDBOX_READY
    assert st.network.ip == ""
    assert st.linux.namespaces.options.network == api_pb2.NODE
    details = info(server, sandbox_id)
    assert details["netnsPath"] == ""
    assert [(t["verb"], t["plugin"]) for t in details["timeline"]] == [("PIN", "namespaces")]  # IPC only
    assert not [p for p in server.netns_dir.iterdir()] if server.netns_dir.exists() else True
    assert [link for link in node.links() if link.startswith("veth")] == []
    stop_and_remove(server, sandbox_id)


def test_status_runtime_conditions(server: CrishimServer) -> None:
    conditions = {c.type: c for c in server.runtime().Status(
        api_pb2.StatusRequest()).status.conditions}
    assert conditions["RuntimeReady"].status and conditions["NetworkReady"].status


def test_sysctls_and_hostname(server: CrishimServer) -> None:
    config = pod_config("tuned", hostname="tuned-host")
    config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "0"
    config.linux.sysctls["kernel.shmmni"] = "1000"
    sandbox_id = run_pod(server, config)
    details = info(server, sandbox_id)
    from tests.harness import run
    assert run(["nsenter", f"--net={details['netnsPath']}", "cat",
                "/proc/sys/net/ipv4/ip_unprivileged_port_start"]).stdout.strip() == "0"
    assert run(["nsenter", f"--ipc={details['ipcNamespacePath']}", "cat",
                "/proc/sys/kernel/shmmni"]).stdout.strip() == "1000"
    assert run(["nsenter", f"--uts={details['utsNamespacePath']}", "hostname"]).stdout.strip() == \
        "tuned-host"
    assert (Path(details["sandboxDir"]) / "hostname").read_text() == "tuned-host\n"
    stop_and_remove(server, sandbox_id)


def test_pod_without_hostname_and_with_a_long_name_gets_the_node_hostname(server: CrishimServer) -> None:
    """critest's pods: no hostname, a name of 68 characters. The node's host name is the default
    (containerd, CRI-O); the pod name is not, as sethostname takes at most 64 bytes."""
    name = f"create-PodSandbox-for-container-{uuid.uuid4()}"
    assert len(name) > 64
    sandbox_id = run_pod(server, pod_config(name))
    details = info(server, sandbox_id)
    from tests.harness import run
    node_hostname = socket.gethostname()
    assert run(["nsenter", f"--uts={details['utsNamespacePath']}", "hostname"]).stdout.strip() == \
        node_hostname
    assert (Path(details["sandboxDir"]) / "hostname").read_text() == node_hostname + "\n"
    assert status(server, sandbox_id).status.metadata.name == name
    stop_and_remove(server, sandbox_id)


@pytest.mark.parametrize("hostname", ["h" * 64, "bad_host", "-lead", "a..b\n"])
def test_invalid_explicit_hostname_is_refused_naming_the_field(server: CrishimServer, hostname: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        run_pod(server, pod_config("named", hostname=hostname))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.hostname" in (err.value.details() or "")
    assert server.runtime().ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []


def test_second_server_refused_and_kill9_restart(server: CrishimServer,
                                                 server_factory: Callable[..., CrishimServer]) -> None:
    twin = server_factory("twin", start=False)
    twin.root = server.root
    twin.write_config()
    from tests.harness import run
    result = run(twin.command(), check=False, timeout=30)
    assert result.returncode != 0
    assert f"another crishim is serving on {server.socket}" in result.stderr
    server.kill9()
    assert server.socket.exists()
    server.start()
    poll(lambda: server.runtime().Version(api_pb2.VersionRequest()).runtime_name == "crishim",
         what="restarted server")
