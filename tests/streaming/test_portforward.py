"""PortForward into a pod's network namespace and to a host-network pod, over SPDY and WebSocket."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import pytest

from crishim.sandbox.model import NamespaceMode
from crishim.streaming import spdy
from crishim.streaming.websocket import WebSocketTransport
from tests.streaming.client import read_all, spdy_connect, spdy_port_forward, ws_connect
from tests.streaming.conftest import Stack

pytestmark = pytest.mark.root

HTTPD = "mkdir -p /tmp/www && echo -n hello-pod > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"
GET = b"GET /index.html HTTP/1.0\r\n\r\n"


async def _session(url: str) -> spdy.Session:
    answer, session = await spdy_connect(url, ["portforward.k8s.io"])
    assert session is not None, answer
    assert answer.headers["x-stream-protocol-version"] == "portforward.k8s.io"
    return session


async def _until_served(stack: Stack, port: int) -> bytes:
    """httpd starts asynchronously: retry (each try a new connection) until it answers."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        session = await _session(stack.server.port_forward_url(stack.pod.sandbox.id, [port]))
        try:
            body, error = await spdy_port_forward(session, port, 0, GET)
        finally:
            await session.close()
        if body:
            return body
        assert b"refused" in error, error
        assert asyncio.get_running_loop().time() < deadline, error
        await asyncio.sleep(0.05)


async def test_port_forward_into_the_pod(stack: Stack) -> None:
    await stack.run("web", HTTPD)
    assert (await _until_served(stack, 8080)).endswith(b"hello-pod")
    session = await _session(stack.server.port_forward_url(stack.pod.sandbox.id, []))
    try:
        # Several connections over one session, in parallel, and a port nobody listens on.
        results = await asyncio.gather(*(spdy_port_forward(session, 8080, i, GET) for i in range(5)))
        assert all(body.endswith(b"hello-pod") and not error for body, error in results)
        body, error = await spdy_port_forward(session, 8081, 99, GET)
        assert body == b"" and b"refused" in error
    finally:
        await session.close()


async def test_port_forward_refuses_ports_not_requested(stack: Stack) -> None:
    session = await _session(stack.server.port_forward_url(stack.pod.sandbox.id, [8080]))
    try:
        body, error = await spdy_port_forward(session, 9090, 1, GET)
        assert body == b"" and b"not named" in error
    finally:
        await session.close()


async def test_port_forward_over_websocket_tunnel(stack: Stack) -> None:
    await stack.run("web", HTTPD)
    await _until_served(stack, 8080)
    url = stack.server.port_forward_url(stack.pod.sandbox.id, [8080])
    answer, ws = await ws_connect(url, ["SPDY/3.1+portforward.k8s.io"])
    assert ws is not None, answer
    assert answer.headers["sec-websocket-protocol"] == "SPDY/3.1+portforward.k8s.io"
    session = spdy.Session(WebSocketTransport(ws), server=False)
    session.start()
    try:
        body, error = await spdy_port_forward(session, 8080, 0, GET)
        assert body.endswith(b"hello-pod") and not error
    finally:
        await session.close()


async def test_port_forward_to_a_host_network_pod(stack: Stack) -> None:
    # A host-network pod's ports are the node's: crishim's own namespace (loopback only here).
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"from the node:" + await reader.readexactly(4))
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    pod = stack.pod.sandbox
    host_pod = dataclasses.replace(pod, id="host" + pod.id[4:], netns_path="",
                                   spec=dataclasses.replace(pod.spec, network_mode=NamespaceMode.NODE))
    stack.sandboxes.items[host_pod.id] = host_pod
    try:
        session = await _session(stack.server.port_forward_url(host_pod.id, [port]))
        try:
            body, error = await spdy_port_forward(session, port, 0, b"ping")
            assert (body, error) == (b"from the node:ping", b"")
        finally:
            await session.close()
    finally:
        listener.close()
        await listener.wait_closed()


async def test_connections_to_a_host_port_that_does_not_answer_hold_no_pooled_thread(stack: Stack) -> None:
    """A port whose accept queue is full drops our SYNs: each connect waits for its timeout. That wait is on
    a thread of its own: on the loop's pool, a few such streams held every thread, and every call that
    needs one, for CONNECT_TIMEOUT."""
    deaf = socket.create_server(("127.0.0.1", 0), backlog=0)  # accepts nothing
    port = deaf.getsockname()[1]
    queued = [socket.create_connection(("127.0.0.1", port), timeout=1)]  # the queue (of one) is full
    pod = stack.pod.sandbox
    host_pod = dataclasses.replace(pod, id="host" + pod.id[4:], netns_path="",
                                   spec=dataclasses.replace(pod.spec, network_mode=NamespaceMode.NODE))
    stack.sandboxes.items[host_pod.id] = host_pod
    session = await _session(stack.server.port_forward_url(host_pod.id, [port]))
    try:
        try:
            errors = []
            for request_id in range(12):
                headers = {"port": str(port), "requestID": str(request_id)}
                errors.append(await session.open_stream({"streamType": "error", **headers}))
                await session.open_stream({"streamType": "data", **headers})
            assert await asyncio.wait_for(asyncio.to_thread(lambda: "pooled"), 2) == "pooled"
        finally:
            for sock in [*queued, deaf]:
                sock.close()
        # The connects now fail at once: each stream reports it, and no connecting thread outlives the test.
        reports = await asyncio.wait_for(asyncio.gather(*(read_all(error) for error in errors)), 20)
        assert all(b"127.0.0.1" in report or str(port).encode() in report for report in reports), reports
    finally:
        await session.close()
