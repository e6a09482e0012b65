"""Exec, attach and port-forward against real containers, through both client transports."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.streaming.client import spdy_remotecommand, ws_remotecommand
from tests.streaming.conftest import Stack

pytestmark = pytest.mark.root


async def test_exec_echo_stdout_only(stack: Stack) -> None:
    c = await stack.run("main", "sleep 3600")
    url = stack.server.exec_url(c.id, ["echo", "-n", "hello"], stdin=False, stdout=True, stderr=False,
                                tty=False)
    assert url.startswith(stack.server.base_url + "/exec/")
    result = await spdy_remotecommand(url)
    assert (result.stdout, result.stderr, result.exit_code) == (b"hello", b"", 0)
    assert json.loads(result.error) == {"metadata": {}, "status": "Success"}


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


async def test_exec_tty_echo_and_resize(stack: Stack) -> None:
    c = await stack.run("main", "sleep 3600")
    url = stack.server.exec_url(c.id, ["sh", "-c", "read line; echo got:$line; stty size"], stdin=True,
                                stdout=True, stderr=False, tty=True)
    result = await spdy_remotecommand(url, stdin=b"hi\r", tty=True, size=(123, 45))
    text = result.stdout.decode()
    assert "hi\r\n" in text  # echoed by the terminal
    assert "got:hi\r\n" in text
    assert "45 123\r\n" in text
    assert result.exit_code == 0


@pytest.mark.parametrize("protocol", ["v5.channel.k8s.io", "v4.channel.k8s.io"])
async def test_websocket_exec(stack: Stack, protocol: str) -> None:
    c = await stack.run("main", "sleep 3600")
    url = stack.server.exec_url(c.id, ["sh", "-c", "cat; echo err >&2; exit 7"], stdin=True,
                                stdout=True, stderr=True, tty=False)
    result = await ws_remotecommand(url, stdin=b"piped", protocol=protocol)
    assert (result.stdout, result.stderr, result.exit_code) == (b"piped", b"err\n", 7)


async def test_websocket_tty_resize(stack: Stack) -> None:
    c = await stack.run("main", "sleep 3600")
    url = stack.server.exec_url(c.id, ["stty", "size"], stdin=False, stdout=True, stderr=False, tty=True)
    result = await ws_remotecommand(url, size=(90, 30))
    assert result.stdout == b"30 90\r\n"
