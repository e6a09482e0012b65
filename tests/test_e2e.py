"""A whole pod through a real `crishim serve` in a test node: image pull, sandbox, containers, traffic.

The registry the image fixtures fill listens on the machine's loopback, which a test node cannot reach,
so a second `docker-registry` serves the same storage on the node's own 127.0.0.1 and the same port:
image references stay identical inside and outside the node.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.harness import REPO, CrishimServer, TestNode, mounts_below, poll, run
from tests.image_fixtures import HTTP_GET
from tests.sandbox.podutil import node_leftovers, pod_config, run_pod, status, stop_and_remove

pytestmark = pytest.mark.root



def container_config(name: str, image: str, *command: str, **fields: object) -> api_pb2.ContainerConfig:
    return api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name=name),
                                   image=api_pb2.ImageSpec(image=image), command=list(command),
                                   log_path=f"{name}.log", **fields)


def start_container(server: CrishimServer, pod_id: str, pod: api_pb2.PodSandboxConfig,
                    config: api_pb2.ContainerConfig) -> str:
    rt = server.runtime()
    container_id = rt.CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod)).container_id
    rt.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    return str(container_id)


def exec_sync(server: CrishimServer, container_id: str, *cmd: str) -> api_pb2.ExecSyncResponse:
    return server.runtime().ExecSync(api_pb2.ExecSyncRequest(container_id=container_id, cmd=list(cmd),
                                                             timeout=10))


def container_state(server: CrishimServer, container_id: str) -> api_pb2.ContainerStatus:
    return server.runtime().ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=container_id)).status


def conmon_pids(server: CrishimServer) -> set[str]:
    """conmon processes of this server (other suites may run their own)."""
    return set(run(["pgrep", "-f", f"conmon .*{server.root}"], check=False).stdout.split())


def test_pod_with_containers_end_to_end(node: TestNode, server_factory: Callable[..., CrishimServer],
                                        node_registry: str, busybox_image: str, tmp_path: Path) -> None:
    server = server_factory()
    before = node_leftovers(node, server)
    images = server.images()
    image_ref = images.PullImage(api_pb2.PullImageRequest(
        image=api_pb2.ImageSpec(image=busybox_image))).image_ref
    assert image_ref.startswith("sha256:")
    listed = images.ListImages(api_pb2.ListImagesRequest()).images
    assert [i.id for i in listed] == [image_ref] and busybox_image in listed[0].repo_tags

    logs = tmp_path / "pod-logs"
    web_pod = pod_config("web", host_ports=[(80, 18090)], hostname="web-host", log_directory=str(logs),
                         dns_config=api_pb2.DNSConfig(servers=["10.0.0.53"], searches=["e2e.local"]))
    web_id = run_pod(server, web_pod)
    web_ip = status(server, web_id).status.network.ip
    httpd = start_container(server, web_id, web_pod, container_config(
        "httpd", busybox_image, "sh", "-c",
        "mkdir -p /www && echo hello-httpd > /www/index.html && exec httpd -f -p 80 -h /www"))
    talker = start_container(server, web_id, web_pod, container_config(
        "talker", busybox_image, "sh", "-c", "echo to-stdout; echo to-stderr >&2; exec sleep 600"))

    def http_from_node(url: str) -> str:
        result = node.sh(sys.executable, "-c", HTTP_GET, url, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    poll(lambda: http_from_node(f"http://{web_ip}/") == "hello-httpd", what="httpd on the pod IP")
    assert http_from_node(f"http://{web_ip.rsplit('.', 1)[0]}.1:18090/") == "hello-httpd"

    # Containers of one pod share the network, the hostname and the pod's resolv.conf.
    same_pod = exec_sync(server, talker, "wget", "-qO-", "http://127.0.0.1:80/")
    assert (same_pod.exit_code, same_pod.stdout) == (0, b"hello-httpd\n")
    assert exec_sync(server, talker, "hostname").stdout == b"web-host\n"
    resolv = exec_sync(server, talker, "cat", "/etc/resolv.conf").stdout.decode()
    assert "nameserver 10.0.0.53" in resolv and "search e2e.local" in resolv
    addresses = exec_sync(server, talker, "ip", "-4", "addr", "show", "eth0").stdout.decode()
    assert f"inet {web_ip}/" in addresses
    failing = exec_sync(server, talker, "sh", "-c", "echo oops >&2; exit 7")
    assert (failing.exit_code, failing.stderr) == (7, b"oops\n")

    # A second pod reaches the first across the bridge.
    client_pod = pod_config("client")
    client_id = run_pod(server, client_pod)
    client = start_container(server, client_id, client_pod,
                             container_config("client", busybox_image, "sleep", "600"))
    across = exec_sync(server, client, "wget", "-qO-", f"http://{web_ip}/")
    assert across.stdout == b"hello-httpd\n"

    # CRI log lines with the right streams.
    log_path = Path(container_state(server, talker).log_path)
    assert log_path.is_absolute() and log_path.parent == logs

    def log_lines() -> list[tuple[str, str, str]]:
        lines = [line.split(" ", 3) for line in log_path.read_text().splitlines()]
        return [(stream, tag, text) for _, stream, tag, text in lines]

    poll(lambda: sorted(log_lines()) == [("stderr", "F", "to-stderr"), ("stdout", "F", "to-stdout")],
         what="both log lines")

    rt = server.runtime()
    listed_containers = rt.ListContainers(api_pb2.ListContainersRequest(
        filter=api_pb2.ContainerFilter(pod_sandbox_id=web_id))).containers
    assert {c.id for c in listed_containers} == {httpd, talker}
    assert all(c.image_ref == image_ref for c in listed_containers)

    # Stopping the pod stops its containers before the network goes; removing it removes them.
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=web_id))
    assert container_state(server, httpd).state == api_pb2.CONTAINER_EXITED
    assert container_state(server, talker).state == api_pb2.CONTAINER_EXITED
    rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=web_id))
    assert rt.ListContainers(api_pb2.ListContainersRequest(
        filter=api_pb2.ContainerFilter(pod_sandbox_id=web_id))).containers == []

    # A restart of crishim leaves running containers running and reports them correctly.
    server.kill9()
    server.start()
    assert container_state(server, client).state == api_pb2.CONTAINER_RUNNING
    assert exec_sync(server, client, "echo", "still-here").stdout == b"still-here\n"
    rt = server.runtime()
    rt.StopContainer(api_pb2.StopContainerRequest(container_id=client, timeout=1))
    finished = container_state(server, client)
    assert finished.state == api_pb2.CONTAINER_EXITED and finished.exit_code == 143  # SIGTERM
    stop_and_remove(server, client_id)
    images = server.images()
    images.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image_ref)))
    assert images.ListImages(api_pb2.ListImagesRequest()).images == []
    assert node_leftovers(node, server) == before
    poll(lambda: not conmon_pids(server), what="every conmon to exit")
    # Only crishim's tmpfs for pod files stays (run/sandboxes); nothing is mounted inside it any more.
    assert mounts_below(server.root) == [str(server.root / "run" / "sandboxes")]


STREAM_CLIENT = """
import asyncio, json, sys
from tests.streaming import client

async def main(kind, url):
    if kind == "exec":
        result = await client.spdy_remotecommand(url, stdout=True, stderr=True)
        print(json.dumps({"stdout": result.stdout.decode(), "stderr": result.stderr.decode(),
                          "exit": result.exit_code}))
    else:
        answer, session = await client.spdy_connect(url, ["portforward.k8s.io"])
        assert session is not None, answer
        data, error = await client.spdy_port_forward(session, 80, 0, b"GET / HTTP/1.0\\r\\n\\r\\n")
        await session.close()
        print(json.dumps({"data": data.decode(errors="replace"), "error": error.decode()}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def stream_from_node(node: TestNode, kind: str, url: str) -> dict[str, object]:
    """The streaming server listens on the node's loopback: the client runs in the node too."""
    result = run([*node.prefix(), sys.executable, "-c", STREAM_CLIENT, kind, url], cwd=REPO, timeout=60)
    return dict(json.loads(result.stdout))


def test_streaming_stats_events_metrics_end_to_end(node: TestNode,
                                                   server_factory: Callable[..., CrishimServer],
                                                   node_registry: str, busybox_image: str) -> None:
    server = server_factory(**{"metrics.address": "127.0.0.1:19101"})
    rt = server.runtime()
    events: list[api_pb2.ContainerEventResponse] = []
    subscription = rt.GetContainerEvents(api_pb2.GetEventsRequest())

    def collect() -> None:
        with contextlib.suppress(grpc.RpcError):  # ends with the cancellation below
            events.extend(subscription)

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    server.images().PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=busybox_image)))
    pod = pod_config("streamed")
    pod_id = run_pod(server, pod)
    web = start_container(server, pod_id, pod, container_config(
        "web", busybox_image, "sh", "-c",
        "mkdir -p /www && echo hello-forwarded > /www/index.html && exec httpd -f -p 80 -h /www"))

    url = rt.Exec(api_pb2.ExecRequest(container_id=web, cmd=["sh", "-c", "echo -n hello; exit 3"],
                                      stdout=True, stderr=True)).url
    assert url.startswith("http://127.0.0.1:")
    assert stream_from_node(node, "exec", url) == {"stdout": "hello", "stderr": "", "exit": 3}
    forward = rt.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=pod_id, port=[80])).url

    def forwarded() -> bool:
        answer = stream_from_node(node, "portforward", forward)
        return "hello-forwarded" in str(answer["data"])

    poll(forwarded, what="port-forward to httpd in the pod")

    stats = rt.ContainerStats(api_pb2.ContainerStatsRequest(container_id=web)).stats
    assert stats.cpu.timestamp > 0 and stats.cpu.usage_core_nano_seconds.value > 0
    assert stats.memory.working_set_bytes.value > 0
    pod_stats = rt.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats
    eth0 = pod_stats.linux.network.default_interface
    assert eth0.name == "eth0" and eth0.rx_bytes.value > 0 and eth0.tx_bytes.value > 0

    from prometheus_client.parser import text_string_to_metric_families
    scrape = node.sh(sys.executable, "-c", HTTP_GET, "http://127.0.0.1:19101/metrics").stdout
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(scrape) for s in family.samples}
    cni_adds = [v for (name, labels), v in samples.items()
                if name == "crishim_cni_operation_duration_seconds_count" and ("verb", "ADD") in labels]
    assert sum(cni_adds) >= 3  # loopback, bridge and portmap for this pod
    assert any(name == "crishim_rpc_duration_seconds_count" and ("method", "RunPodSandbox") in labels
               for name, labels in samples)

    stop_and_remove(server, pod_id)
    expected = [(pod_id, api_pb2.CONTAINER_CREATED_EVENT), (pod_id, api_pb2.CONTAINER_STARTED_EVENT),
                (web, api_pb2.CONTAINER_CREATED_EVENT), (web, api_pb2.CONTAINER_STARTED_EVENT),
                (web, api_pb2.CONTAINER_STOPPED_EVENT), (pod_id, api_pb2.CONTAINER_STOPPED_EVENT),
                (web, api_pb2.CONTAINER_DELETED_EVENT), (pod_id, api_pb2.CONTAINER_DELETED_EVENT)]

    def delivered() -> list[tuple[str, int]]:
        return [item for item in ((e.container_id, e.container_event_type) for e in list(events))
                if item in expected]

    poll(lambda: len(delivered()) >= len(expected), what="every lifecycle event")
    subscription.cancel()
    collector.join(10)
    assert delivered() == expected
