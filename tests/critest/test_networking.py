"""critest's Networking specs (pkg/validate/networking.go), sent as critest sends them, through a real
`crishim serve` in a test node; critest's HTTP checks run where it runs, on the node."""

from __future__ import annotations

import sys

import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.container.criutil import Cri, cri
from tests.critest import framework
from tests.harness import TestNode, poll

pytestmark = pytest.mark.root
__all__ = ["cri"]

# consts.go
DNS_SERVER, DNS_SEARCH, DNS_OPTION = "10.10.10.10", "google.com", "ndots:8"
WEB_SERVER_CONTAINER_PORT = 80
WEB_SERVER_HOST_PORT_FOR_PORT_MAPPING = 12000
# critest's web server is the nginx image's own entrypoint; busybox's httpd stands in for it.
WEB_SERVER = ("sh", "-c",
              "mkdir -p /www && echo critest-web > /www/index.html && exec httpd -f -p 80 -h /www")
HTTP_STATUS = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).status)"


def pod_with_container(cri: Cri, pod: api_pb2.PodSandboxConfig,
                       container: api_pb2.ContainerConfig) -> tuple[str, str]:
    pod_id = framework.run_pod(cri.server, pod)
    container_id = framework.create_container(cri.server, pod_id, pod, container)
    framework.start_container(cri.server, container_id)
    return pod_id, container_id


def test_runtime_should_support_dns_config(cri: Cri) -> None:
    """runtime should support DNS config [Conformance]"""
    pod = framework.pod_config(cri.server, "create-PodSandbox-with-DNS-config", dns_config=api_pb2.DNSConfig(
        servers=[DNS_SERVER], searches=[DNS_SEARCH], options=[DNS_OPTION]))
    pod_id, container_id = pod_with_container(
        cri, pod, framework.container_config("container-for-DNS-config-test-", cri.image))
    result = framework.exec_sync(cri.server, container_id, "cat", "/etc/resolv.conf")
    assert result.exit_code == 0 and result.stderr == b""
    for line in (f"nameserver {DNS_SERVER}", f"search {DNS_SEARCH}", f"options {DNS_OPTION}"):
        assert line in result.stdout.decode()
    framework.cleanup_pod(cri.server, pod_id)


def test_runtime_should_support_set_hostname(cri: Cri) -> None:
    """runtime should support set hostname [Conformance]"""
    pod = framework.pod_config(cri.server, "create-PodSandbox-with-hostname", hostname="test-hostname")
    pod_id, container_id = pod_with_container(
        cri, pod, framework.container_config("container-for-hostname-test-", cri.image))
    result = framework.exec_sync(cri.server, container_id, "hostname")
    assert result.exit_code == 0 and result.stderr == b""
    assert result.stdout.decode().strip().lower() == "test-hostname"
    framework.cleanup_pod(cri.server, pod_id)


def check_main_page(node: TestNode, url: str) -> None:
    """checkMainPage: from the node, the page answers 200 within a minute."""
    def status() -> str:
        result = node.sh(sys.executable, "-c", HTTP_STATUS, url, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    assert poll(status, timeout=60, interval=0.2, what=f"{url} to answer") == "200"


PORT_MAPPING_CASES = [
    pytest.param(0, id="runtime should support port mapping with only container port"),
    pytest.param(WEB_SERVER_HOST_PORT_FOR_PORT_MAPPING,
                 id="runtime should support port mapping with host port and container port"),
]


@pytest.mark.parametrize("host_port", PORT_MAPPING_CASES)
def test_runtime_should_support_port_mapping(cri: Cri, node: TestNode, host_port: int) -> None:
    """runtime should support port mapping with only container port [Conformance] (the page on the pod's
    IP) / runtime should support port mapping with host port and container port [Conformance] (the page
    on the node's 127.0.0.1 and the host port)."""
    mapping = api_pb2.PortMapping(container_port=WEB_SERVER_CONTAINER_PORT, host_port=host_port)
    pod = framework.pod_config(cri.server, "create-PodSandbox-with-port-mapping", port_mappings=[mapping])
    prefix = "container-for-host-port" if host_port else "container-for-container-port"
    container = framework.container_config(prefix, cri.image, WEB_SERVER)
    pod_id, _ = pod_with_container(cri, pod, container)
    if host_port:
        check_main_page(node, f"http://127.0.0.1:{host_port}")
    else:
        ip = cri.server.runtime().PodSandboxStatus(
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status.network.ip
        assert ip
        check_main_page(node, f"http://{ip}:{WEB_SERVER_CONTAINER_PORT}")
    framework.cleanup_pod(cri.server, pod_id)
