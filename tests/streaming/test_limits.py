"""The streaming port under misbehaving clients: a refused request leaves its token to the real session,
slow and idle clients are cut off, and a flood of idle connections cannot starve crishim of descriptors."""

from __future__ import annotations

import asyncio
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from crishim.api.runtime.v1 import api_pb2
from crishim.sandbox.namespaces import PodNamespaces, enter_namespaces
from crishim.streaming import spdy
from crishim.streaming.server import HEADER_TIMEOUT
from tests.container.ctrutil import wait_until
from tests.harness import REPO, CrishimServer, TestNode, poll, run
from tests.image_fixtures import TestImages
from tests.sandbox.podutil import pod_config, run_pod
from tests.streaming.client import http_request, spdy_connect, spdy_remotecommand, ws_connect
from tests.streaming.conftest import Stack, pids_running
from tests.test_e2e import container_config, exec_sync, start_container, stream_from_node

pytestmark = pytest.mark.root

SPDY_UPGRADE = {"Connection": ["Upgrade"], "Upgrade": ["SPDY/3.1"]}
V4 = "v4.channel.k8s.io"


async def test_refused_requests_leave_the_token_unspent(stack: Stack) -> None:
    c = await stack.run("main", "sleep 3600")
    url = stack.server.exec_url(c.id, ["echo", "-n", "ran"], stdin=False, stdout=True, stderr=False,
                                tty=False)
    refusals: list[tuple[str, str, dict[str, list[str]], int]] = [
        ("GET", url, {}, 400),  # a plain GET, no upgrade
        ("GET", url, {**SPDY_UPGRADE, "X-Stream-Protocol-Version": ["portforward.k8s.io"]}, 403),
        ("GET", url, {"Connection": ["Upgrade"], "Upgrade": ["websocket"],  # no Sec-WebSocket-Key
                      "Sec-WebSocket-Protocol": ["v5.channel.k8s.io"]}, 400),
        ("PUT", url, {**SPDY_UPGRADE, "X-Stream-Protocol-Version": [V4]}, 405),
        ("GET", url.replace("/exec/", "/portforward/"), {**SPDY_UPGRADE}, 404),
    ]
    for method, target, headers, status in refusals:
        answer, _, _ = await http_request(target, headers, method)
        assert answer.status == status, (method, target, headers, answer)
    result = await spdy_remotecommand(url)
    assert (result.stdout, result.exit_code) == (b"ran", 0)
    answer, session = await spdy_connect(url, [V4])  # spent by the session it opened
    assert session is None and answer.status == 404

    forward = stack.server.port_forward_url(stack.pod.sandbox.id, [8080])
    answer, session = await spdy_connect(forward, [V4])
    assert session is None and answer.status == 403
    answer, ws = await ws_connect(forward, ["v5.channel.k8s.io"])
    assert ws is None and answer.status == 403
    answer, session = await spdy_connect(forward, ["portforward.k8s.io"])
    assert session is not None, answer
    await session.close()
    answer, session = await spdy_connect(forward, ["portforward.k8s.io"])
    assert session is None and answer.status == 404


async def test_a_trickled_request_head_is_cut_at_the_deadline(stack: Stack) -> None:
    """Every byte comes well within the deadline; the head as a whole does not (slowloris)."""
    stack.server.header_timeout = 2.0
    c = await stack.run("main", "sleep 3600")
    url = stack.server.exec_url(c.id, ["true"], stdin=False, stdout=True, stderr=False, tty=False)
    parts = urlsplit(url)
    head = (f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: Upgrade\r\n"
            f"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {V4}\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    start = loop.time()  # before the connect: the server may start its clock before our connect returns
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    sent = 0

    async def trickle() -> None:
        nonlocal sent
        for byte in head:  # four bytes a second: the whole head would take half a minute
            sent += 1
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.25)

    trickler = asyncio.create_task(trickle())
    try:
        try:
            answer = await asyncio.wait_for(reader.read(), 30)
        except ConnectionResetError:
            answer = b""
        cut_after, sent_then = loop.time() - start, sent
    finally:
        trickler.cancel()
        await asyncio.gather(trickler, return_exceptions=True)
        writer.close()
    assert answer == b""  # dropped without an answer, as Go's ReadHeaderTimeout does
    assert sent_then < len(head) and 2.0 <= cut_after < 15, (sent_then, cut_after)
    assert (await spdy_remotecommand(url)).exit_code == 0  # the cut request did not spend the token


async def test_connections_beyond_the_unauthenticated_cap_are_closed_at_once(stack: Stack) -> None:
    stack.server.max_unauthenticated = 4
    stack.server.header_timeout = 8.0
    c = await stack.run("main", "sleep 3600")
    url = stack.server.exec_url(c.id, ["true"], stdin=False, stdout=True, stderr=False, tty=False)
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    start = loop.time()
    connections = [await asyncio.open_connection(parts.hostname, parts.port) for _ in range(10)]
    reads = [asyncio.create_task(reader.read()) for reader, _ in connections]

    def closed() -> int:
        return sum(r.done() for r in reads)

    try:
        await wait_until(lambda: closed() >= 6, what="the connections beyond the cap to be closed")
        assert closed() == 6 and loop.time() - start < stack.server.header_timeout
        await wait_until(lambda: closed() == 10, within=stack.server.header_timeout + 10,
                         what="the idle connections within the cap to be dropped at the deadline")
    finally:
        for task in reads:
            task.cancel()
        for _, writer in connections:
            writer.close()
    assert (await spdy_remotecommand(url)).exit_code == 0


async def test_idle_sessions_are_closed_and_busy_ones_kept(stack: Stack) -> None:
    stack.server.config.idle_timeout = 2.5
    c = await stack.run("main", "sleep 3600")
    busy = stack.server.exec_url(c.id, ["sh", "-c", "for i in $(seq 30); do echo $i; sleep 0.2; done"],
                                 stdin=False, stdout=True, stderr=False, tty=False)
    result = await spdy_remotecommand(busy)  # six seconds of output, never idle for long
    assert result.exit_code == 0 and result.stdout.split() == [str(i).encode() for i in range(1, 31)]

    loop = asyncio.get_running_loop()
    marker = b"sleep\x004243\x00"
    quiet = stack.server.exec_url(c.id, ["sleep", "4243"], stdin=False, stdout=True, stderr=False, tty=False)
    _, session = await spdy_connect(quiet, [V4])
    assert session is not None
    await session.open_stream({"streamType": "error"})
    last_frame = loop.time()
    await session.open_stream({"streamType": "stdout"})
    await wait_until(lambda: pids_running(marker), what="the exec'd sleep to start")
    await wait_until(session.closed.is_set, what="the idle SPDY session to be closed")
    assert loop.time() - last_frame >= 2.5
    await wait_until(lambda: not pids_running(marker), what="the idle session's process to be killed")
    await session.close()

    marker = b"sleep\x004244\x00"
    quiet = stack.server.exec_url(c.id, ["sleep", "4244"], stdin=False, stdout=True, stderr=False, tty=False)
    _, ws = await ws_connect(quiet, ["v5.channel.k8s.io"])
    assert ws is not None
    try:
        assert await ws.receive() is not None  # the empty message that opens stdout
        await wait_until(lambda: pids_running(marker), what="the exec'd sleep to start")
        assert await asyncio.wait_for(ws.receive(), 10) is None
        await wait_until(lambda: not pids_running(marker), what="the idle session's process to be killed")
    finally:
        ws.abort()


def written(pid: int) -> int:
    """Bytes the process has written so far (what crishim has had to take from its output pipe)."""
    line = next(text for text in Path(f"/proc/{pid}/io").read_text().splitlines() if text.startswith("wchar"))
    return int(line.split()[1])


async def test_a_client_that_never_reads_output_stalls_only_its_own_session(stack: Stack) -> None:
    """The process writes 256 MiB that nobody reads: crishim holds a bounded part of it (the process waits
    on its pipe) and serves other sessions meanwhile."""
    c = await stack.run("main", "sleep 3600")
    marker = b"head\x00-c\x00268435457\x00/dev/zero\x00"
    flood = stack.server.exec_url(c.id, ["head", "-c", "268435457", "/dev/zero"], stdin=False, stdout=True,
                                  stderr=False, tty=False)
    _, session = await spdy_connect(flood, [V4])
    assert session is not None
    try:
        await session.open_stream({"streamType": "error"})
        await session.open_stream({"streamType": "stdout"})  # never read
        (pid,) = await wait_until(lambda: pids_running(marker), what="the exec'd head to start")
        await wait_until(lambda: written(pid) > 1 << 20, what="the output to flow")
        for i in range(3):
            url = stack.server.exec_url(c.id, ["echo", "-n", f"other {i}"], stdin=False, stdout=True,
                                        stderr=False, tty=False)
            result = await asyncio.wait_for(spdy_remotecommand(url), 10)
            assert (result.stdout, result.exit_code) == (f"other {i}".encode(), 0)
        assert pids_running(marker) == [pid] and written(pid) < 64 << 20
    finally:
        await session.close()
    await wait_until(lambda: not pids_running(marker), what="the abandoned session's process to end")



async def test_a_session_stopped_inside_a_frame_is_dropped_at_the_idle_timeout(stack: Stack) -> None:
    """Half a frame header is no traffic: the session ends and its process with it."""
    stack.server.config.idle_timeout = 1.5
    c = await stack.run("main", "sleep 3600")
    marker = b"sleep\x004245\x00"
    url = stack.server.exec_url(c.id, ["sleep", "4245"], stdin=True, stdout=True, stderr=False, tty=False)
    _, session = await spdy_connect(url, [V4])
    assert session is not None
    try:
        await session.open_stream({"streamType": "error"})
        await session.open_stream({"streamType": "stdin"})
        await session.open_stream({"streamType": "stdout"})
        await wait_until(lambda: pids_running(marker), what="the exec'd sleep to start")
        assert isinstance(session.transport, spdy.StreamTransport)
        session.transport.writer.write(b"\x00\x00\x00")  # the start of a DATA frame's header, no more
        await wait_until(session.closed.is_set, what="the stalled session to be closed")
        await wait_until(lambda: not pids_running(marker), what="the stalled session's process to be killed")
    finally:
        await session.close()


# ---- a whole crishim under a low open-files limit ------------------------------------------------

STREAM_PORT = 10350  # the node's own loopback: no other listener there


@dataclass
class LimitedServer(CrishimServer):
    """A crishim started under the open-files limit (soft, hard) given."""

    nofile: tuple[int, int] = (1024, 1024)

    def command(self) -> list[str]:
        return ["prlimit", f"--nofile={self.nofile[0]}:{self.nofile[1]}", "--", *super().command()]

    def open_files_limit(self) -> tuple[int, int]:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
        raise AssertionError("no open files line in /proc/PID/limits")


@pytest.fixture
def limited_server(server_factory: Callable[..., CrishimServer]) -> Callable[[int, int], LimitedServer]:
    """Servers made (not started) by `server_factory`, under the open-files limit given."""
    count = 0

    def make(soft: int, hard: int) -> LimitedServer:
        nonlocal count
        count += 1
        server = server_factory(f"crishim{count}", start=False, kind=LimitedServer,
                                **{"streaming.port": STREAM_PORT})
        assert isinstance(server, LimitedServer)
        server.nofile = (soft, hard)
        return server

    return make


def test_the_open_files_limit_is_raised_at_start(
        limited_server: Callable[[int, int], LimitedServer]) -> None:
    server = limited_server(256, 1024)
    server.start()
    assert server.open_files_limit() == (1024, 1024)


class Flood(threading.Thread):
    """Keeps `count` idle connections open to the node's streaming port, opening a new one for each the
    server drops: what any local process could do."""

    def __init__(self, node: TestNode, port: int, count: int) -> None:
        super().__init__(daemon=True)
        self.node, self.port, self.count = node, port, count
        self.stopping = threading.Event()
        self.opened = 0
        self.dropped = 0
        self.held: list[socket.socket] = []

    def run(self) -> None:
        enter_namespaces(PodNamespaces(net=self.node.path))  # this thread only; it ends with the flood
        with selectors.DefaultSelector() as sel:
            while not self.stopping.is_set():
                while len(sel.get_map()) < self.count:
                    try:
                        sock = socket.create_connection(("127.0.0.1", self.port), timeout=1)
                    except OSError:
                        break
                    sel.register(sock, selectors.EVENT_READ)
                    self.opened += 1
                for key, _ in sel.select(0.05):
                    sel.unregister(key.fileobj)
                    key.fileobj.close()  # type: ignore[union-attr]
                    self.dropped += 1
            self.held = [key.fileobj for key in sel.get_map().values()]  # type: ignore[misc]


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_an_idle_connection_flood_cannot_starve_the_server(
        limited_server: Callable[[int, int], LimitedServer], node: TestNode, test_images: TestImages
) -> None:
    server = limited_server(256, 256)
    server.write_config()
    imported = run([sys.executable, "-m", "crishim", "--config", str(server.config_path), "images", "import",
                    str(test_images.layout)], cwd=REPO)
    image = imported.stdout.split()[0]
    server.start()
    assert server.open_files_limit() == (256, 256)
    flood = Flood(node, STREAM_PORT, 300)
    flood_start = time.monotonic()
    flood.start()
    try:
        poll(lambda: flood.opened >= 300, timeout=30, what="the flood to open its connections")
        pod = pod_config("flooded")
        pod_id = run_pod(server, pod)
        ctr = start_container(server, pod_id, pod, container_config("main", image, "sleep", "3600"))
        answer = exec_sync(server, ctr, "echo", "still-serving")
        assert (answer.exit_code, answer.stdout) == (0, b"still-serving\n")
        assert flood.is_alive() and flood.dropped > 0  # the server dropped the excess, the flood reopened
    finally:
        flood.stopping.set()
        flood.join(30)
    flood_minutes = (time.monotonic() - flood_start) / 60
    held = flood.held
    try:
        poll(lambda: all(_closed_by_peer(s) for s in held), timeout=HEADER_TIMEOUT + 10,
             what="the server to drop every idle connection")
    finally:
        for sock in held:
            sock.close()
    url = server.runtime().Exec(api_pb2.ExecRequest(container_id=ctr, cmd=["echo", "-n", "streamed"],
                                                    stdout=True, stderr=True)).url
    assert stream_from_node(node, "exec", url) == {"stdout": "streamed", "stderr": "", "exit": 0}
    log = server.log()
    assert "Too many open files" not in log
    warnings = log.count("streaming connections closed: too many waiting for their request")
    assert 1 <= warnings <= 1 + flood_minutes, (warnings, flood.dropped)  # seen, but once a minute at most

