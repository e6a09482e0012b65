"""The CRI and admin sockets of a real `crishim serve` under clients that connect and then misbehave: they
must neither stop other clients' calls nor hold the daemon's descriptors, threads and memory forever.
(The streaming port's share is in tests/streaming/test_limits.py.)"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

import grpc
import pytest

from crishim.admin import admin_socket_path
from crishim.admin.protocol import FRAME_HEADER, line
from crishim.api.runtime.v1 import api_pb2
from crishim.server.app import MAX_CONCURRENT_STREAMS, MAX_MESSAGE_BYTES
from tests.harness import CrishimServer, poll
from tests.image.test_import_running import crishim_import, store_leftovers
from tests.image_fixtures import TestImages

pytestmark = pytest.mark.root

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, SETTINGS = 1, 3, 4
END_STREAM, END_HEADERS = 1, 4
INITIAL_WINDOW_SIZE = 4


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def settings(**values: int) -> bytes:
    ids = {"initial_window_size": INITIAL_WINDOW_SIZE}
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", ids[k], v) for k, v in values.items()))


def version_call(stream: int) -> bytes:
    """A whole Version RPC on `stream`: headers as HPACK literals, then an empty message."""
    fields = [(":method", "POST"), (":scheme", "http"), (":path", "/runtime.v1.RuntimeService/Version"),
              (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers")]
    block = b"".join(b"\x00" + bytes([len(k)]) + k.encode() + bytes([len(v)]) + v.encode() for k, v in fields)
    return frame(HEADERS, END_HEADERS, stream, block) + frame(0, END_STREAM, stream, b"\x00" * 5)


def frame_kinds(data: bytes) -> Counter[int]:
    kinds: Counter[int] = Counter()
    while len(data) >= 9:
        size = int.from_bytes(data[:3], "big")
        kinds[data[3]] += 1
        data = data[9 + size:]
    return kinds


def open_fds(server: CrishimServer) -> int:
    assert server.proc is not None
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


def sockets(server: CrishimServer) -> set[str]:
    """The daemon's open sockets (`socket:[inode]`): new ones are told from those it had, whatever other
    descriptors it opens or closes meanwhile (the image client's warm-up at start has a few)."""
    assert server.proc is not None
    fd_dir = f"/proc/{server.proc.pid}/fd"
    found = set()
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(FileNotFoundError):
            if (target := os.readlink(f"{fd_dir}/{fd}")).startswith("socket:"):
                found.add(target)
    return found


def answers_promptly(server: CrishimServer) -> None:
    """Other clients are served as usual: each call answers within a second."""
    rt = server.runtime()
    for call in (lambda: rt.Version(api_pb2.VersionRequest(), timeout=1),
                 lambda: rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=1)):
        start = time.monotonic()
        call()
        assert time.monotonic() - start < 1


def closed_by_server(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536, socket.MSG_DONTWAIT):
            pass  # the server's SETTINGS and GOAWAY
    except BlockingIOError:
        return False
    except ConnectionResetError:
        pass
    return True


# What a stalled client may have sent before it stopped: nothing, part of the preface, a whole preface and
# SETTINGS, or that and the first byte of a HEADERS frame announcing 100.
STALLS = [b"", PREFACE[:10], PREFACE + settings(),
          PREFACE + settings() + frame(HEADERS, END_HEADERS, 1, b"x" * 100)[:10]]


IDLE_TIMEOUT = 5.0


def test_stalled_connections_neither_block_others_nor_stay(
        server_factory: Callable[..., CrishimServer]) -> None:
    server = server_factory(connection_idle_timeout=IDLE_TIMEOUT)
    answers_promptly(server)
    baseline, known = open_fds(server), sockets(server)
    stalled = []
    try:
        for i in range(200):
            sock = socket.socket(socket.AF_UNIX)
            stalled.append(sock)
            sock.connect(str(server.socket))
            sock.sendall(STALLS[i % len(STALLS)])
        answers_promptly(server)
        # Every one is taken, none turned away. grpc accepts from the listen backlog in its own time (a
        # connect succeeds before that), so this is waited for, well within the idle timeout.
        poll(lambda: len(sockets(server) - known) >= 200, timeout=IDLE_TIMEOUT - 1,
             what="the server to accept every stalled connection")
        start = time.monotonic()
        poll(lambda: all(closed_by_server(s) for s in stalled), timeout=15,
             what="the server to close every stalled connection")
        assert time.monotonic() - start > 0.5  # they were held to the timeout, not refused
    finally:
        for sock in stalled:
            sock.close()
    poll(lambda: open_fds(server) <= baseline, what="the closed connections' descriptors to be released")
    answers_promptly(server)


def test_a_client_that_never_reads_answers_cannot_pile_up_streams(server: CrishimServer) -> None:
    """It announces a zero flow-control window, so no answer can leave, and opens stream after stream.

    Without a limit on concurrent streams each one stays in the server; past a few thousand grpc cancelled
    the RPCs of every other client."""
    calls = 8000
    received = bytearray()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(server.socket))
        sock.settimeout(10)

        def drain() -> None:  # read what the server sends, so that its writes never stall ours
            with contextlib.suppress(OSError):
                while data := sock.recv(1 << 20):
                    received.extend(data)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        sock.sendall(PREFACE + settings(initial_window_size=0)
                     + b"".join(version_call(2 * i + 1) for i in range(calls)))
        answers_promptly(server)

        def refused() -> int:
            return frame_kinds(bytes(received))[RST_STREAM]

        poll(lambda: refused() >= calls - MAX_CONCURRENT_STREAMS, what="the streams beyond the limit reset")
        assert frame_kinds(bytes(received))[HEADERS] <= MAX_CONCURRENT_STREAMS
        sock.shutdown(socket.SHUT_RDWR)
        reader.join(10)
    answers_promptly(server)



def test_a_request_over_the_message_limit_is_refused_alone(server: CrishimServer) -> None:
    """kubelet's lists may reach 16 MiB (not grpc's default 4); more is refused without harm to anyone."""
    rt = server.runtime()

    def list_with_selector(size: int) -> api_pb2.ListContainersResponse:
        selector = api_pb2.ContainerFilter(label_selector={"k": "v" * size})
        return rt.ListContainers(api_pb2.ListContainersRequest(filter=selector), timeout=10)

    assert list(list_with_selector(12 << 20).containers) == []
    with pytest.raises(grpc.RpcError) as refused:
        list_with_selector(MAX_MESSAGE_BYTES)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    answers_promptly(server)


# ---- the admin socket ------------------------------------------------------------------------------

def test_stalled_admin_clients_hold_neither_threads_nor_descriptors(
        server_factory: Callable[..., CrishimServer], test_images: TestImages) -> None:
    """Silent clients and clients stopped inside their request line are answered at the timeout; clients
    stopped inside an archive (here until they leave: the progress timeout is minutes) cost a thread each
    but not one of the pool every RPC shares, which a handful of them used to fill."""
    server = server_factory(connection_idle_timeout=1.0)
    baseline = open_fds(server)
    request = line({"call": "import"})
    silent: list[socket.socket] = []
    importing: list[socket.socket] = []
    try:
        for i in range(30):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(admin_socket_path(server.root / "run")))
            (silent if i % 3 else importing).append(sock)
            sock.sendall([request + FRAME_HEADER.pack(1 << 16)[:2], b"", request[:5]][i % 3])
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as unreachable:  # the registry's host config is read on a thread
            server.images().PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="127.0.0.1:1/x:1")),
                                      timeout=5)
        assert unreachable.value.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() - start < 2
        assert crishim_import(server, str(test_images.layout), timeout=30).stdout.split()
        for sock in silent:
            sock.settimeout(10)
            answer = sock.makefile().readline()
            assert '"no request line within 1s' in answer and "InvalidArgument" in answer, answer
    finally:
        for sock in silent + importing:
            sock.close()
    poll(lambda: store_leftovers(server) == [], what="the abandoned imports' scratch to go")
    poll(lambda: open_fds(server) <= baseline, what="the admin connections' descriptors to be released")
