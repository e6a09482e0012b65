"""critest's streaming specs (cri-tools pkg/validate/streaming.go, streaming_linux.go): Exec, Attach and
PortForward URLs from a real `crishim serve`, used the way client-go's SPDY clients use them.

critest's client runs on the node; here it runs inside the test node's network namespace (a Python
script over tests/streaming/client.py, which follows client-go's framing).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.critest import framework
from tests.critest.node import CritestNode, critest_node, loads
from tests.harness import poll, run
from tests.image_fixtures import HTTP_GET, TestImages

__all__ = ["critest_node"]  # the module-scoped fixture, imported for pytest

pytestmark = pytest.mark.root

ECHO_HELLO = ["echo", "-n", "hello"]
WEB_SERVER_CONTAINER_PORT = 80
WEB_SERVER_HOST_NET_CONTAINER_PORT = 12003
# What client-go's SPDY executor offers, most preferred first.
CLIENT_GO_PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io",
                       "v2.channel.k8s.io", "channel.k8s.io"]

CLIENT = """
import asyncio, json, sys
from crishim.streaming import spdy
from crishim.streaming.websocket import WebSocketTransport
from tests.streaming import client

PROTOCOLS = %(protocols)s
GET = b"GET / HTTP/1.0\\r\\n\\r\\n"


def as_json(result):
    return {"stdout": result.stdout.decode(), "stderr": result.stderr.decode(), "exit": result.exit_code}


async def exec_(url, tty, websocket):
    # checkExec: no stdin unless tty; with tty, stdin stays open until the command is done.
    if websocket:  # the URL says stdin; the client just never closes it
        return as_json(await client.ws_remotecommand(url, stdin=None, protocol=PROTOCOLS[0]))
    result = await client.spdy_remotecommand(url, stdin=b"" if tty else None, stdout=True,
                                             stderr=not tty, tty=tty, keep_stdin_open=True,
                                             protocol=PROTOCOLS)
    return as_json(result)


async def attach_spdy(url):
    answer, session = await client.spdy_connect(url, PROTOCOLS)
    assert session is not None, answer
    error = await session.open_stream({"streamType": "error"})
    await error.close()
    stdin = await session.open_stream({"streamType": "stdin"})
    out = await session.open_stream({"streamType": "stdout"})
    err = await session.open_stream({"streamType": "stderr"})
    readers = [asyncio.create_task(client.read_all(s)) for s in (err, error)]
    stdout = b""
    await stdin.write(b"echo -n hello\\n")
    while stdout != b"hello":
        chunk = await asyncio.wait_for(out.read(), 20)
        assert chunk, stdout
        stdout += chunk
    await stdin.close()
    rest, stderr, status = await asyncio.wait_for(asyncio.gather(client.read_all(out), *readers), 20)
    await session.close()
    return {"stdout": (stdout + rest).decode(), "stderr": stderr.decode(), "error": status.decode()}


async def attach_websocket(url):
    answer, ws = await client.ws_connect(url, [PROTOCOLS[0]])
    assert ws is not None, answer
    channels = {1: b"", 2: b"", 3: b""}
    await ws.send(b"\\x00echo -n hello\\n")

    async def receive():
        message = await asyncio.wait_for(ws.receive(), 20)
        if message is not None:
            channels[message[1][0]] += message[1][1:]
        return message

    while channels[1] != b"hello":
        assert await receive() is not None, channels
    await ws.send(b"\\xff\\x00")  # v5: stdin closed
    while await receive() is not None:
        pass
    ws.abort()
    return {"stdout": channels[1].decode(), "stderr": channels[2].decode(), "error": channels[3].decode()}


async def portforward(url, port, websocket):
    if websocket:  # client-go's tunnel: SPDY inside WebSocket messages
        answer, ws = await client.ws_connect(url, ["SPDY/3.1+portforward.k8s.io"])
        assert ws is not None, answer
        session = spdy.Session(WebSocketTransport(ws), server=False)
        session.start()
    else:
        answer, session = await client.spdy_connect(url, ["portforward.k8s.io"])
        assert session is not None, answer
    data, error = await client.spdy_port_forward(session, port, 0, GET)
    await session.close()
    return {"data": data.decode(errors="replace"), "error": error.decode()}


async def main(kind, transport, url, arg):
    websocket = transport == "websocket"
    if kind == "exec":
        out = await exec_(url, arg == "tty", websocket)
    elif kind == "attach":
        out = await (attach_websocket(url) if websocket else attach_spdy(url))
    else:
        out = await portforward(url, int(arg), websocket)
    print(json.dumps(out))

asyncio.run(main(*sys.argv[1:]))
""" % {"protocols": CLIENT_GO_PROTOCOLS}  # noqa: UP031 - the script itself uses braces

# critest's --websocket-exec, --websocket-attach and --websocket-portforward; SPDY by default.
TRANSPORTS = pytest.mark.parametrize("transport", ["spdy", "websocket"])


def stream(critest: CritestNode, kind: str, transport: str, url: str, arg: str = "") -> dict[str, object]:
    return loads(critest.python(CLIENT, kind, transport, url, arg))


@pytest.fixture(scope="module")
def web_images(test_images: TestImages) -> dict[str, str]:
    """critest's web server images (nginx; hostnet-nginx on port 12003): serve a main page on their own,
    with no command in the container config."""
    def push(repo: str, port: int) -> str:
        script = f"mkdir -p /www && echo critest > /www/index.html && exec httpd -f -p {port} -h /www"
        return test_images.registry.push_image(repo, ["1"], [test_images.base_layer],
                                               {"Cmd": ["sh", "-c", script]}).ref
    return {"pod": push("critest-nginx", WEB_SERVER_CONTAINER_PORT),
            "hostnet": push("critest-hostnet-nginx", WEB_SERVER_HOST_NET_CONTAINER_PORT)}


@pytest.fixture
def pods(critest_node: CritestNode) -> Iterator[list[str]]:
    """critest's AfterEach: stop and remove the spec's pod, which must succeed."""
    made: list[str] = []
    yield made
    for pod_id in made:
        critest_node.stop_and_remove_pod(pod_id)


def default_container(critest: CritestNode, pods: list[str], busybox_image: str, prefix: str,
                      command: list[str], **fields: object) -> str:
    """framework.CreatePodSandboxForContainer + a container of the default image, started."""
    pod = critest.pod_config()
    pods.append(critest.run_pod(pod))
    container_id = critest.create_container(pods[-1], pod, framework.container_config(
        prefix, busybox_image, tuple(command), **fields))
    critest.start(container_id)
    return container_id


@TRANSPORTS
def test_runtime_should_support_exec_with_tty_false_and_stdin_false(
        critest_node: CritestNode, pods: list[str], busybox_image: str, transport: str) -> None:
    """runtime should support exec with tty=false and stdin=false [Conformance]"""
    container_id = default_container(critest_node, pods, busybox_image, "container-for-exec-test",
                                     command=["top"])
    url = critest_node.rc.Exec(api_pb2.ExecRequest(container_id=container_id, cmd=ECHO_HELLO,
                                                   stdout=True, stderr=True)).url
    assert stream(critest_node, "exec", transport, url) == {"stdout": "hello", "stderr": "", "exit": 0}


@TRANSPORTS
def test_runtime_should_support_exec_with_tty_true_and_stdin_true(
        critest_node: CritestNode, pods: list[str], busybox_image: str, transport: str) -> None:
    """runtime should support exec with tty=true and stdin=true [Conformance]

    critest keeps its stdin open until the exec returns: the exit of the command must end it."""
    container_id = default_container(critest_node, pods, busybox_image, "container-for-exec-test",
                                     command=["top"])
    url = critest_node.rc.Exec(api_pb2.ExecRequest(container_id=container_id, cmd=ECHO_HELLO,
                                                   stdout=True, tty=True, stdin=True)).url
    result = stream(critest_node, "exec", transport, url, "tty")
    assert "hello" in str(result["stdout"]) and result["stderr"] == "" and result["exit"] == 0


@TRANSPORTS
def test_runtime_should_support_attach(critest_node: CritestNode, pods: list[str],
                                       busybox_image: str, transport: str) -> None:
    """runtime should support attach [Conformance]

    createShellContainer: /bin/sh with stdin and stdin_once; closing the attach's stdin closes the
    shell's, so it exits and the attach ends."""
    container_id = default_container(critest_node, pods, busybox_image, "container-for-attach-test",
                                     command=["/bin/sh"], stdin=True, stdin_once=True, tty=False)
    url = critest_node.rc.Attach(api_pb2.AttachRequest(container_id=container_id, stdin=True,
                                                       stdout=True, stderr=True, tty=False)).url
    result = stream(critest_node, "attach", transport, url)
    assert (result["stdout"], result["stderr"]) == ("hello", "")
    assert json.loads(str(result["error"]))["status"] == "Success"  # client-go: no error

    def exited() -> bool:
        status = critest_node.rc.ContainerStatus(api_pb2.ContainerStatusRequest(
            container_id=container_id)).status
        return bool(status.state == api_pb2.CONTAINER_EXITED)

    poll(exited, what="the shell to exit once its stdin (stdin_once) is closed")


def check_main_page(critest: CritestNode, url: str) -> None:
    """checkMainPage: GET the server's main page until it answers 200 (the server starts on its own)."""
    def served() -> bool:
        return run([*critest.node.prefix(), "python3", "-c", HTTP_GET, url], check=False).returncode == 0

    poll(served, timeout=30, interval=0.2, what=f"the web server at {url}")


def web_server_pod(critest: CritestNode, pods: list[str], image: str, port: int,
                   host_network: bool) -> str:
    """createPodSandboxWithPortMapping + createWebServerContainer (no command: the image's own)."""
    pod = critest.pod_config("create-PodSandbox-with-port-mapping",
                             port_mappings=[api_pb2.PortMapping(container_port=port)])
    if host_network:
        pod.linux.security_context.namespace_options.network = api_pb2.NODE
    pods.append(critest.run_pod(pod))
    critest.start(critest.create_container(pods[-1], pod, framework.container_config(
        "container-for-portforward-test", image, ())))
    return pods[-1]


@TRANSPORTS
def test_runtime_should_support_portforward(critest_node: CritestNode, pods: list[str],
                                            web_images: dict[str, str], transport: str) -> None:
    """runtime should support portforward [Conformance]

    PortForwardRequest names no port (critest's createDefaultPortForward); the client asks for 80."""
    pod_id = web_server_pod(critest_node, pods, web_images["pod"], WEB_SERVER_CONTAINER_PORT, False)
    ip = critest_node.rc.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id)).status.network.ip
    check_main_page(critest_node, f"http://{ip}:{WEB_SERVER_CONTAINER_PORT}/")
    url = critest_node.rc.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=pod_id)).url
    result = stream(critest_node, "portforward", transport, url, str(WEB_SERVER_CONTAINER_PORT))
    assert str(result["data"]).startswith("HTTP/1.") and " 200 " in str(result["data"]).split("\r\n")[0]
    assert str(result["data"]).endswith("critest\n") and result["error"] == ""


@TRANSPORTS
def test_runtime_should_support_portforward_in_host_network(
        critest_node: CritestNode, pods: list[str], web_images: dict[str, str], transport: str) -> None:
    """runtime should support portforward in host network"""
    port = WEB_SERVER_HOST_NET_CONTAINER_PORT
    pod_id = web_server_pod(critest_node, pods, web_images["hostnet"], port, True)
    check_main_page(critest_node, f"http://127.0.0.1:{port}/")
    url = critest_node.rc.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=pod_id)).url
    result = stream(critest_node, "portforward", transport, url, str(port))
    assert " 200 " in str(result["data"]).split("\r\n")[0], json.dumps(result)
    assert str(result["data"]).endswith("critest\n") and result["error"] == ""
