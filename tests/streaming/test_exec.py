"""Exec, attach and port-forward against real containers, through both client transports."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from crishim import errors
from crishim.api.runtime.v1 import api_pb2
from crishim.server.container_attach import ContainerAttachMixin
from crishim.server.container_exec import ContainerExecMixin
from crishim.server.sandbox_portforward import SandboxPortForwardMixin
from crishim.streaming.server import StreamingServer
from tests.container.ctrutil import wait_until
from tests.streaming.client import read_all, spdy_connect, spdy_remotecommand, ws_connect, ws_remotecommand
from tests.streaming.conftest import Stack, displayed, pids_running

pytestmark = pytest.mark.root


BOTH_RUNTIMES = pytest.mark.parametrize("stack", ["runc", "crun"], indirect=True)


@BOTH_RUNTIMES
async def test_exec_echo_stdout_only(stack: Stack) -> None:
    c = await stack.run("main", "sleep 3600")
    url = stack.server.exec_url(c.id, ["echo", "-n", "hello"], stdin=False, stdout=True, stderr=False,
                                tty=False)
    assert url.startswith(stack.server.base_url + "/exec/")
    result = await spdy_remotecommand(url)
    assert (result.stdout, result.stderr, result.exit_code) == (b"hello", b"", 0)
    assert json.loads(result.error) == {"metadata": {}, "status": "Success"}


@BOTH_RUNTIMES
async def test_exec_exit_code_and_stderr(stack: Stack) -> None:
    c = await stack.run("main", "sleep 3600")
    url = stack.server.exec_url(c.id, ["sh", "-c", "echo out; echo err >&2; exit 3"], stdin=False,
                                stdout=True, stderr=True, tty=False)
    result = await spdy_remotecommand(url, stderr=True)
    assert (result.stdout, result.stderr, result.exit_code) == (b"out\n", b"err\n", 3)


async def test_exec_stdin_pipes(stack: Stack) -> None:
    c = await stack.run("main", "sleep 3600")
    url = stack.server.exec_url(c.id, ["sh", "-c", "tr a-z A-Z; echo done"], stdin=True, stdout=True,
                                stderr=False, tty=False)
    result = await spdy_remotecommand(url, stdin=b"abc\n" * 10000)
    assert result.stdout == b"ABC\n" * 10000 + b"done\n"
    assert result.exit_code == 0


@BOTH_RUNTIMES
async def test_exec_tty_echo_and_resize(stack: Stack) -> None:
    c = await stack.run("main", "sleep 3600")
    url = stack.server.exec_url(c.id, ["sh", "-c", "read line; echo got:$line; stty size"], stdin=True,
                                stdout=True, stderr=False, tty=True)
    result = await spdy_remotecommand(url, stdin=b"hi\r", tty=True, size=(123, 45))
    text = displayed(result.stdout)
    assert "hi\r\n" in text  # echoed by the terminal
    assert "got:hi\r\n" in text
    assert "45 123\r\n" in text
    assert result.exit_code == 0


@pytest.mark.parametrize("protocol", ["v5.channel.k8s.io", "v4.channel.k8s.io"])
async def test_websocket_exec(stack: Stack, protocol: str) -> None:
    c = await stack.run("main", "sleep 3600")
    # v4 cannot signal the end of stdin (v5 can): read a known amount.
    script = "cat" if protocol.startswith("v5.") else "head -c 5"
    url = stack.server.exec_url(c.id, ["sh", "-c", f"{script}; echo err >&2; exit 7"], stdin=True,
                                stdout=True, stderr=True, tty=False)
    result = await ws_remotecommand(url, stdin=b"piped", protocol=protocol)
    assert (result.stdout, result.stderr, result.exit_code) == (b"piped", b"err\n", 7)


async def test_websocket_tty_resize(stack: Stack) -> None:
    c = await stack.run("main", "sleep 3600")
    url = stack.server.exec_url(c.id, ["stty", "size"], stdin=False, stdout=True, stderr=False, tty=True)
    result = await ws_remotecommand(url, size=(90, 30))
    assert displayed(result.stdout) == "30 90\r\n"


STTY_SIZE = re.compile(rb"(?m)^(\d+ \d+)\r")


async def test_resize_reaches_a_running_process(stack: Stack) -> None:
    c = await stack.run("main", "sleep 3600")
    url = stack.server.exec_url(c.id, ["sh"], stdin=True, stdout=True, stderr=False, tty=True)
    _, session = await spdy_connect(url, ["v4.channel.k8s.io"])
    assert session is not None
    try:
        error = await session.open_stream({"streamType": "error"})
        stdin = await session.open_stream({"streamType": "stdin"})
        stdout = await session.open_stream({"streamType": "stdout"})
        resize = await session.open_stream({"streamType": "resize"})
        await resize.write(b'{"Width":80,"Height":24}')
        await resize.write(b'{"Width":132,"Height":50}')
        seen = bytearray()

        async def collect() -> None:  # all along, as client-go does: a client that stops reading one
            while chunk := await stdout.read():  # stream stalls the whole session
                seen.extend(chunk)

        collector = asyncio.create_task(collect())
        answers: list[bytes] = []

        def answered() -> bool:
            return len(STTY_SIZE.findall(seen)) > len(answers)

        while answers[-1:] != [b"50 132"]:  # SIGWINCH is asynchronous: ask until the new size shows
            assert len(answers) < 100, answers
            await stdin.write(b"stty size\r")  # one question at a time: the answers cannot pile up
            await wait_until(answered, within=20, what="stty's answer")
            answers[:] = STTY_SIZE.findall(seen)
        await stdin.write(b"exit 4\r")
        status = await asyncio.wait_for(read_all(error), 20)
        await asyncio.wait_for(collector, 20)
        assert json.loads(status)["details"]["causes"][0]["message"] == "4"
    finally:
        await session.close()


async def test_attach_to_a_shell_reading_stdin(stack: Stack) -> None:
    c = await stack.run("reader", 'read line; echo "got $line"; echo bye >&2', stdin=True,
                        stdin_once=True)
    url = stack.server.attach_url(c.id, stdin=True, stdout=True, stderr=True, tty=False)
    result = await spdy_remotecommand(url, stdin=b"hello\n", stderr=True, keep_stdin_open=True)
    assert (result.stdout, result.stderr, result.exit_code) == (b"got hello\n", b"bye\n", 0)


async def test_attach_over_websocket(stack: Stack) -> None:
    c = await stack.run("reader", 'read line; echo "ws $line"', stdin=True)
    url = stack.server.attach_url(c.id, stdin=True, stdout=True, stderr=False, tty=False)
    result = await ws_remotecommand(url, stdin=b"there\n")
    assert result.stdout == b"ws there\n"


async def test_bad_and_reused_tokens_are_404(stack: Stack) -> None:
    c = await stack.run("main", "sleep 3600")
    answer, session = await spdy_connect(f"{stack.server.base_url}/exec/nope", ["v4.channel.k8s.io"])
    assert session is None and answer.status == 404
    url = stack.server.exec_url(c.id, ["true"], stdin=False, stdout=True, stderr=False, tty=False)
    answer, session = await spdy_connect(url.replace("/exec/", "/attach/"), ["v4.channel.k8s.io"])
    assert session is None and answer.status == 404  # the token is for another endpoint
    assert (await spdy_remotecommand(url)).exit_code == 0
    answer, session = await spdy_connect(url, ["v4.channel.k8s.io"])
    assert session is None and answer.status == 404
    answer, ws = await ws_connect(url, ["v5.channel.k8s.io"])
    assert ws is None and answer.status == 404


async def test_unsupported_protocol_is_refused(stack: Stack) -> None:
    c = await stack.run("main", "sleep 3600")
    url = stack.server.exec_url(c.id, ["true"], stdin=False, stdout=True, stderr=False, tty=False)
    answer, session = await spdy_connect(url, ["v9.channel.k8s.io"])
    assert session is None and answer.status == 403
    assert "v4.channel.k8s.io" in answer.headers["x-accepted-stream-protocol-versions"]


@BOTH_RUNTIMES
async def test_client_disconnect_kills_the_process(stack: Stack) -> None:
    c = await stack.run("main", "sleep 3600")
    marker = b"sleep\x004242\x00"
    url = stack.server.exec_url(c.id, ["sleep", "4242"], stdin=False, stdout=True, stderr=False,
                                tty=False)
    _, session = await spdy_connect(url, ["v4.channel.k8s.io"])
    assert session is not None
    await session.open_stream({"streamType": "error"})
    await session.open_stream({"streamType": "stdout"})
    await wait_until(lambda: pids_running(marker), what="the exec'd sleep to start")
    await session.close()
    await wait_until(lambda: not pids_running(marker), what="the exec'd sleep to be killed")


@BOTH_RUNTIMES
async def test_client_leaving_before_the_process_starts_still_kills_it(stack: Stack) -> None:
    """The runtime writes the pid file only once the process runs: a client gone before then must not
    leave the process behind in the container."""
    c = await stack.run("main", "sleep 3600")
    marker = b"sleep\x004245\x00"
    url = stack.server.exec_url(c.id, ["sleep", "4245"], stdin=False, stdout=True, stderr=False,
                                tty=False)
    _, session = await spdy_connect(url, ["v4.channel.k8s.io"])
    assert session is not None
    await session.open_stream({"streamType": "error"})
    await session.open_stream({"streamType": "stdout"})
    await session.close()
    await wait_until(lambda: stack.server.connection_count == 0, within=20,
                     what="the streaming server to finish with the connection")
    assert not pids_running(marker)


async def test_twenty_concurrent_execs(stack: Stack) -> None:
    c = await stack.run("main", "sleep 3600")
    urls = [stack.server.exec_url(c.id, ["sh", "-c", f"echo -n {i}; exit {i}"], stdin=False, stdout=True,
                                  stderr=False, tty=False) for i in range(20)]
    results = await asyncio.gather(*(spdy_remotecommand(url) for url in urls))
    assert [(r.stdout, r.exit_code) for r in results] == [(str(i).encode(), i) for i in range(20)]


async def test_rpc_validation(stack: Stack) -> None:
    c = await stack.run("main", "sleep 3600")
    server = stack.server
    with pytest.raises(errors.InvalidArgument, match="tty and stderr"):
        server.exec_url(c.id, ["sh"], stdin=False, stdout=True, stderr=True, tty=True)
    with pytest.raises(errors.InvalidArgument, match="one of stdin"):
        server.exec_url(c.id, ["sh"], stdin=False, stdout=False, stderr=False, tty=False)
    with pytest.raises(errors.InvalidArgument, match="cmd"):
        server.exec_url(c.id, [], stdin=False, stdout=True, stderr=False, tty=False)
    with pytest.raises(errors.NotFound):
        server.exec_url("nope", ["sh"], stdin=False, stdout=True, stderr=False, tty=False)
    with pytest.raises(errors.InvalidArgument, match="without stdin"):
        server.attach_url(c.id, stdin=True, stdout=True, stderr=False, tty=False)
    with pytest.raises(errors.NotFound):
        server.port_forward_url("nope", [80])
    with pytest.raises(errors.InvalidArgument, match="out of range"):
        server.port_forward_url(stack.pod.sandbox.id, [0])


@pytest.mark.parametrize("protocol", ["v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"])
async def test_older_spdy_protocols_report_errors_as_text(stack: Stack, protocol: str) -> None:
    c = await stack.run("main", "sleep 3600")
    url = stack.server.exec_url(c.id, ["sh", "-c", "echo -n old; exit 3"], stdin=False, stdout=True,
                                stderr=False, tty=False)
    result = await spdy_remotecommand(url, protocol=protocol)
    assert result.stdout == b"old"
    assert result.error.startswith(b"command terminated with non-zero exit code") and b"3" in result.error


class _Runtime:
    def __init__(self, streaming: StreamingServer) -> None:
        self.streaming = streaming


async def test_servicers_answer_urls(stack: Stack) -> None:
    c = await stack.run("main", "sleep 3600", stdin=True)
    runtime: Any = _Runtime(stack.server)
    exec_resp = await ContainerExecMixin(runtime).Exec(
        api_pb2.ExecRequest(container_id=c.id, cmd=["echo", "-n", "rpc"], stdout=True), None)
    assert (await spdy_remotecommand(exec_resp.url)).stdout == b"rpc"
    attach_resp = await ContainerAttachMixin(runtime).Attach(
        api_pb2.AttachRequest(container_id=c.id, stdin=True, stdout=True), None)
    assert attach_resp.url.startswith(f"{stack.server.base_url}/attach/")
    pf_resp = await SandboxPortForwardMixin(runtime).PortForward(
        api_pb2.PortForwardRequest(pod_sandbox_id=stack.pod.sandbox.id, port=[80]), None)
    assert pf_resp.url.startswith(f"{stack.server.base_url}/portforward/")
    with pytest.raises(errors.InvalidArgument):
        await ContainerExecMixin(runtime).Exec(
            api_pb2.ExecRequest(container_id=c.id, cmd=["sh"], tty=True, stdout=True, stderr=True), None)
