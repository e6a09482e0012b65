"""The streaming server (kubelet's `cri/streaming` role): the Exec / Attach / PortForward RPCs park a
validated request under a single-use token and answer its URL; the client then connects here and speaks
SPDY or WebSocket to run it."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from crishim import errors
from crishim.config import StreamingSection
from crishim.container.conmon import Conmon
from crishim.container.model import Container, ContainerState
from crishim.container.oci import RuntimeHandler
from crishim.container.ocispec import exec_process
from crishim.sandbox.model import Sandbox, SandboxState
from crishim.sandbox.namespaces import PodNamespaces, enter_namespaces, run_in_thread
from crishim.streaming import portforward, protocol, spdy
from crishim.streaming.channels import Channels, Options, SpdyChannels, WebSocketChannels
from crishim.streaming.protocol import BadRequest, Request
from crishim.streaming.stdio import AttachTarget, ExecTarget, pump
from crishim.streaming.websocket import WebSocket, WebSocketTransport, accept_key

log = logging.getLogger(__name__)

TOKEN_TTL = 60.0
MAX_PENDING = 1000
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 15.0
# client-go sends the terminal size right after connecting; starting the process with it avoids a
# first command (a shell's prompt, `stty size`) seeing a 0x0 terminal.
FIRST_SIZE_WAIT = 1.0


class ContainerSource(Protocol):
    """What the container manager offers the streaming server."""

    runtimes: dict[str, RuntimeHandler]

    def get(self, container_id: str) -> Container | None: ...

    conmon: Conmon

    @property
    def exec_dir(self) -> Path: ...


class SandboxSource(Protocol):
    def get(self, sandbox_id: str) -> Sandbox | None: ...


@dataclass(frozen=True)
class ExecRequest:
    container_id: str
    cmd: list[str]
    options: Options


@dataclass(frozen=True)
class AttachRequest:
    container_id: str
    options: Options


@dataclass(frozen=True)
class PortForwardRequest:
    sandbox_id: str
    ports: frozenset[int]


Pending = ExecRequest | AttachRequest | PortForwardRequest
KIND = {ExecRequest: "exec", AttachRequest: "attach", PortForwardRequest: "portforward"}


class TokenCache:
    """Single-use tokens that expire; `clock` is injectable so expiry can be tested without waiting."""

    def __init__(self, ttl: float = TOKEN_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._items: dict[str, tuple[float, Pending]] = {}

    def put(self, request: Pending) -> str:
        now = self.clock()
        self._items = {k: v for k, v in self._items.items() if v[0] > now}
        if len(self._items) >= MAX_PENDING:
            raise errors.ResourceExhausted(f"too many pending streaming requests ({MAX_PENDING}); "
                                           "retry once some are used or expire")
        token = secrets.token_urlsafe(16)
        self._items[token] = (now + self.ttl, request)
        return token

    def take(self, token: str) -> Pending | None:
        item = self._items.pop(token, None)
        if item is None or item[0] <= self.clock():
            return None
        return item[1]


def _options(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Options:
    if not (stdin or stdout or stderr):
        raise errors.InvalidArgument("one of stdin, stdout or stderr must be set")
    if tty and stderr:
        raise errors.InvalidArgument("tty and stderr cannot both be set: a terminal merges stderr into "
                                     "stdout; ask for stdout only")
    return Options(stdin, stdout, stderr, tty)


class StreamingServer:
    def __init__(self, config: StreamingSection, containers: ContainerSource,
                 sandboxes: SandboxSource) -> None:
        self.config = config
        self.containers = containers
        self.sandboxes = sandboxes
        self.tokens = TokenCache()
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.base_url = ""

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.config.address, self.config.port,
                                                  limit=protocol.MAX_HEAD)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://{_url_host(self.config.address)}:{port}"
        log.info("streaming server listening", extra={"url": self.base_url})

    async def close(self) -> None:
        """Stop listening and end every live stream (exec'd processes are killed)."""
        if self._server is not None:
            self._server.close()
        # Dropping the connections makes every handler see its client gone and clean up after itself.
        for writer in self._connections.values():
            writer.transport.abort()
        tasks = list(self._connections)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # ---- the RPC side --------------------------------------------------------------------------

    def _running(self, container_id: str) -> Container:
        c = self.containers.get(container_id)
        if c is None:
            raise errors.NotFound(f"container {container_id!r} not found")
        if c.state != ContainerState.RUNNING:
            raise errors.FailedPrecondition(f"container {c.id} is {c.state}, not RUNNING")
        return c

    def _url(self, request: Pending) -> str:
        if not self.base_url:
            raise errors.Unavailable("the streaming server is not running")
        return f"{self.base_url}/{KIND[type(request)]}/{self.tokens.put(request)}"

    def exec_url(self, container_id: str, cmd: list[str], *, stdin: bool, stdout: bool, stderr: bool,
                 tty: bool) -> str:
        if not cmd:
            raise errors.InvalidArgument("exec: cmd must not be empty")
        options = _options(stdin, stdout, stderr, tty)
        c = self._running(container_id)
        return self._url(ExecRequest(c.id, list(cmd), options))

    def attach_url(self, container_id: str, *, stdin: bool, stdout: bool, stderr: bool,
                   tty: bool) -> str:
        options = _options(stdin, stdout, stderr, tty)
        c = self._running(container_id)
        if stdin and not c.spec.stdin:
            raise errors.InvalidArgument(f"container {c.id} was created without stdin; attach with "
                                         "stdin=false")
        if tty != c.spec.tty:
            raise errors.InvalidArgument(f"attach tty={tty} does not match container {c.id}, created "
                                         f"with tty={c.spec.tty}")
        return self._url(AttachRequest(c.id, options))

    def port_forward_url(self, sandbox_id: str, ports: list[int]) -> str:
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise errors.NotFound(f"pod sandbox {sandbox_id!r} not found")
        if sandbox.state != SandboxState.READY:
            raise errors.FailedPrecondition(f"pod sandbox {sandbox.id} is {sandbox.state}, not READY")
        for port in ports:
            if not 0 < port < 65536:
                raise errors.InvalidArgument(f"port {port} out of range 1-65535")
        return self._url(PortForwardRequest(sandbox.id, frozenset(ports)))

    # ---- the HTTP side -------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            await self._serve_http(reader, writer)
        except (EOFError, ConnectionError):
            pass
        except BadRequest as exc:
            writer.write(protocol.error_response(exc))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except Exception:
            log.exception("streaming connection failed")
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req = await protocol.read_request(reader)
        parts = req.path.strip("/").split("/")
        if req.method != "GET" and req.method != "POST":
            raise BadRequest(405, f"method {req.method} not allowed")
        if len(parts) != 2 or parts[0] not in KIND.values():
            raise BadRequest(404, f"no such endpoint {req.path}")
        pending = self.tokens.take(parts[1])
        if pending is None or KIND[type(pending)] != parts[0]:
            raise BadRequest(404, "unknown or expired streaming token; call the RPC again")
        if isinstance(pending, PortForwardRequest):
            await self._port_forward(req, reader, writer, pending)
        else:
            await self._remotecommand(req, reader, writer, pending)

    async def _remotecommand(self, req: Request, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter, pending: ExecRequest | AttachRequest) -> None:
        channels: Channels
        if _is_websocket(req):
            version = protocol.negotiate(req.tokens("sec-websocket-protocol"), protocol.WS_REMOTECOMMAND,
                                         "Sec-WebSocket-Protocol")
            _accept_websocket(req, writer, version)
            await writer.drain()
            ws_channels = WebSocketChannels(WebSocket(reader, writer), version, pending.options)
            await ws_channels.start()
            channels = ws_channels
        else:
            offered = req.tokens(protocol.PROTOCOL_HEADER)
            version = protocol.negotiate(offered, protocol.SPDY_REMOTECOMMAND, "X-Accepted-Stream-"
                                         "Protocol-Versions") if offered else protocol.V1
            _accept_spdy(req, writer, version if offered else "")
            session = spdy.Session(spdy.StreamTransport(reader, writer), server=True)
            spdy_channels = SpdyChannels(session, version, pending.options)
            session.on_stream = spdy_channels.on_stream
            session.start()
            if not await spdy_channels.wait_streams():
                await session.close()
                return
            channels = spdy_channels
        await self._run_target(channels, pending)

    async def _run_target(self, channels: Channels, pending: ExecRequest | AttachRequest) -> None:
        c = self.containers.get(pending.container_id)
        if c is None or c.state != ContainerState.RUNNING:
            await channels.finish(protocol.failure_status(
                f"container {pending.container_id} is not running any more"))
            return
        target: ExecTarget | AttachTarget
        if isinstance(pending, ExecRequest):
            target = await self._exec_target(c, pending)
        else:
            sock_dir = self.containers.conmon.socket_dir
            target = AttachTarget(f"{sock_dir}/{c.id}/attach", f"{c.dir}/ctl", pending.options.stdin,
                                  pending.options.stdout, pending.options.stderr)
        initial = None
        if pending.options.tty:
            initial = await channels.initial_size(FIRST_SIZE_WAIT)
        try:
            try:
                await target.start(initial)
            except OSError as exc:
                await channels.finish(protocol.failure_status(f"cannot start the stream: {exc}"))
                return
            await pump(channels, target, pending.options.stdin)
        finally:
            await target.close()

    async def _exec_target(self, c: Container, pending: ExecRequest) -> ExecTarget:
        text = await asyncio.to_thread((Path(c.dir) / "config.json").read_text)
        config: dict[str, Any] = json.loads(text)
        handler = self.containers.runtimes[c.runtime_handler]
        work = self.containers.exec_dir / f"{c.id[:16]}-stream-{secrets.token_hex(6)}"
        opts = pending.options
        return ExecTarget(handler.argv(), c.id, exec_process(config["process"], pending.cmd), work,
                          opts.stdin, opts.stdout, opts.stderr, opts.tty)

    async def _port_forward(self, req: Request, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter, pending: PortForwardRequest) -> None:
        sandbox = self.sandboxes.get(pending.sandbox_id)
        if sandbox is None or sandbox.state != SandboxState.READY:
            raise BadRequest(404, f"pod sandbox {pending.sandbox_id} is gone or not ready")
        transport: spdy.Transport
        if _is_websocket(req):
            protocol.negotiate(req.tokens("sec-websocket-protocol"), (protocol.WS_PORT_FORWARD,),
                               "Sec-WebSocket-Protocol")
            _accept_websocket(req, writer, protocol.WS_PORT_FORWARD)
            transport = WebSocketTransport(WebSocket(reader, writer))
        else:
            offered = req.tokens(protocol.PROTOCOL_HEADER)
            if offered:
                protocol.negotiate(offered, (protocol.PORT_FORWARD,), "X-Accepted-Stream-Protocol-Versions")
            _accept_spdy(req, writer, protocol.PORT_FORWARD if offered else "")
            transport = spdy.StreamTransport(reader, writer)
        await writer.drain()
        forwarder = portforward.PortForwarder(_connector(sandbox), sandbox.id, pending.ports)
        await portforward.serve(spdy.Session(transport, server=True), forwarder)


def _url_host(address: str) -> str:
    """A host for URLs: the listening address, loopback for a wildcard, IPv6 in brackets."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.is_unspecified:
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    return f"[{ip}]" if ip.version == 6 else str(ip)


def _is_websocket(req: Request) -> bool:
    return "websocket" in [t.lower() for t in req.tokens("upgrade")]


def _accept_websocket(req: Request, writer: asyncio.StreamWriter, subprotocol: str) -> None:
    key = req.header("sec-websocket-key")
    if not key or req.header("sec-websocket-version") != "13":
        raise BadRequest(400, "a WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13")
    writer.write(protocol.response(101, "Switching Protocols", {
        "Upgrade": ["websocket"], "Connection": ["Upgrade"],
        "Sec-WebSocket-Accept": [accept_key(key)], "Sec-WebSocket-Protocol": [subprotocol]}))


def _accept_spdy(req: Request, writer: asyncio.StreamWriter, version: str) -> None:
    if "spdy/3.1" not in [t.lower() for t in req.tokens("upgrade")]:
        raise BadRequest(400, "this endpoint needs an upgrade to SPDY/3.1 or websocket")
    headers = {"Connection": ["Upgrade"], "Upgrade": ["SPDY/3.1"]}
    if version:
        headers["X-Stream-Protocol-Version"] = [version]
    writer.write(protocol.response(101, "Switching Protocols", headers))


def _connect_in_netns(netns: str, port: int) -> socket.socket:
    """Blocking, on a throw-away thread: the socket stays bound to the namespace it was made in."""
    enter_namespaces(PodNamespaces(net=netns))
    return socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)


def _connector(sandbox: Sandbox) -> portforward.Connector:
    netns = sandbox.netns_path

    async def connect(port: int) -> socket.socket:
        if sandbox.spec.host_network or not netns:
            sock = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port),
                                           CONNECT_TIMEOUT)
        else:
            sock = await run_in_thread(lambda: _connect_in_netns(netns, port))
        sock.setblocking(False)
        return sock

    return connect
