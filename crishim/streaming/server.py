"""The streaming server (kubelet's `cri/streaming` role): the Exec / Attach / PortForward RPCs park a
validated request under a single-use token and answer its URL; the client then connects here and speaks
SPDY or WebSocket to run it."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import resource
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
from crishim.sandbox.namespaces import PodNamespaces, enter_namespaces
from crishim.streaming import portforward, protocol, spdy
from crishim.streaming.channels import Channels, Options, SpdyChannels, WebSocketChannels
from crishim.streaming.idle import IdleWatch
from crishim.streaming.protocol import BadRequest, Request
from crishim.streaming.stdio import AttachTarget, ExecTarget, pump
from crishim.streaming.websocket import WebSocket, WebSocketTransport, accept_key
from crishim.threads import run_in_thread

log = logging.getLogger(__name__)

TOKEN_TTL = 60.0
MAX_PENDING = 1000
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 15.0
# Seconds a client gets to send its whole request head (Go's ReadHeaderTimeout): an idle or trickling
# connection is dropped instead of holding a descriptor.
HEADER_TIMEOUT = 5.0
ACCEPT_BACKLOG = 100
ACCEPT_RETRY_DELAY = 1.0
REFUSAL_LOG_INTERVAL = 60.0
# Connections that have not yet shown a valid token, at most; further ones are closed at once. Never more
# than a quarter of the descriptor limit, so the rest of the runtime keeps what it needs.
MAX_UNAUTHENTICATED = 128
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

    def peek(self, token: str) -> Pending | None:
        """The request a live token stands for, leaving the token unspent."""
        item = self._items.get(token)
        if item is None or item[0] <= self.clock():
            return None
        return item[1]

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
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._unauthenticated = 0
        self._refused = 0
        self._next_refusal_log = 0.0
        self.header_timeout = HEADER_TIMEOUT
        self.max_unauthenticated = MAX_UNAUTHENTICATED
        self.base_url = ""

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        soft_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft_nofile != resource.RLIM_INFINITY:
            self.max_unauthenticated = min(self.max_unauthenticated, max(1, soft_nofile // 4))
        self._listener = await asyncio.to_thread(_listen, self.config.address, self.config.port)
        self._acceptor = asyncio.get_running_loop().create_task(self._accept(self._listener))
        port = self._listener.getsockname()[1]
        self.base_url = f"http://{_url_host(self.config.address)}:{port}"
        log.info("streaming server listening", extra={"url": self.base_url})

    async def close(self) -> None:
        """Stop listening and end every live stream (exec'd processes are killed)."""
        if self._acceptor is not None:
            self._acceptor.cancel()
            await asyncio.gather(self._acceptor, return_exceptions=True)
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        # Dropping the connections makes every handler see its client gone and clean up after itself.
        for writer in self._connections.values():
            writer.transport.abort()
        tasks = list(self._handlers)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    @property
    def connection_count(self) -> int:
        """Connections being served, from accept to the end of their session."""
        return len(self._handlers)

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

    async def _accept(self, listener: socket.socket) -> None:
        """Accept one connection at a time and count it before the next, so that no more than
        max_unauthenticated ever wait for their request: a flood of idle connections is closed as it
        comes instead of using up the descriptors the rest of crishim needs."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except ConnectionError:
                continue  # the client gave up before we took its connection
            except OSError as exc:  # out of descriptors or memory after all: let others finish first
                log.warning("streaming server cannot accept", extra={"error": str(exc)})
                await asyncio.sleep(ACCEPT_RETRY_DELAY)
                continue
            if self._unauthenticated >= self.max_unauthenticated:
                conn.close()
                self._refused += 1
                if loop.time() >= self._next_refusal_log:  # visible, but a flood does not flood the log
                    self._next_refusal_log = loop.time() + REFUSAL_LOG_INTERVAL
                    log.warning("streaming connections closed: too many waiting for their request",
                                extra={"limit": self.max_unauthenticated, "closed_so_far": self._refused})
                continue
            self._unauthenticated += 1
            task = loop.create_task(self._handle(conn))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _handle(self, conn: socket.socket) -> None:
        """One connection; it counts as unauthenticated until its request has been checked."""
        task = asyncio.current_task()
        assert task is not None
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                async with asyncio.timeout(self.header_timeout):
                    reader, writer = await asyncio.open_connection(sock=conn, limit=protocol.MAX_HEAD)
                    self._connections[task] = writer
                    accepted = await self._authenticate(reader, writer)
            except TimeoutError:
                return  # a slow or idle client is dropped without an answer, as Go's ReadHeaderTimeout
            finally:
                self._unauthenticated -= 1
            if accepted is not None:
                await self._serve_session(reader, writer, *accepted)
        except (EOFError, ConnectionError):
            pass
        except Exception:
            log.exception("streaming connection failed")
        finally:
            self._connections.pop(task, None)
            if writer is not None:
                writer.close()
            else:
                conn.close()

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                            ) -> tuple[Pending, Upgrade] | None:
        """Read and check the request, then spend its token; None once a refusal has been answered.

        Everything that can refuse the request runs before the token is taken (and with no await in
        between), so a malformed request leaves the token to the real session.
        """
        try:
            req = await protocol.read_request(reader)
            token, pending = self._pending(req)
            upgrade = _upgrade(req, pending)
        except BadRequest as exc:
            writer.write(protocol.error_response(exc))
            await writer.drain()
            return None
        self.tokens.take(token)
        return pending, upgrade

    def _pending(self, req: Request) -> tuple[str, Pending]:
        """The request's token and what it stands for, checked without spending the token."""
        parts = req.path.strip("/").split("/")
        if req.method != "GET" and req.method != "POST":
            raise BadRequest(405, f"method {req.method} not allowed")
        if len(parts) != 2 or parts[0] not in KIND.values():
            raise BadRequest(404, f"no such endpoint {req.path}")
        pending = self.tokens.peek(parts[1])
        if pending is None or KIND[type(pending)] != parts[0]:
            raise BadRequest(404, "unknown or expired streaming token; call the RPC again")
        if isinstance(pending, PortForwardRequest):
            sandbox = self.sandboxes.get(pending.sandbox_id)
            if sandbox is None or sandbox.state != SandboxState.READY:
                raise BadRequest(404, f"pod sandbox {pending.sandbox_id} is gone or not ready")
        return parts[1], pending

    async def _serve_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             pending: Pending, upgrade: Upgrade) -> None:
        idle = IdleWatch(self.config.idle_timeout, writer.transport.abort)
        try:
            writer.write(upgrade.response)
            await writer.drain()
            if isinstance(pending, PortForwardRequest):
                await self._port_forward(upgrade, reader, writer, pending, idle)
            else:
                await self._remotecommand(upgrade, reader, writer, pending, idle)
        finally:
            idle.stop()

    async def _remotecommand(self, upgrade: Upgrade, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter, pending: ExecRequest | AttachRequest,
                             idle: IdleWatch) -> None:
        channels: Channels
        if upgrade.websocket:
            ws_channels = WebSocketChannels(WebSocket(reader, writer, on_traffic=idle.touch),
                                            upgrade.version, pending.options)
            await ws_channels.start()
            channels = ws_channels
        else:
            session = spdy.Session(spdy.StreamTransport(reader, writer, on_traffic=idle.touch), server=True)
            spdy_channels = SpdyChannels(session, upgrade.version or protocol.V1, pending.options)
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

    async def _port_forward(self, upgrade: Upgrade, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter, pending: PortForwardRequest, idle: IdleWatch
                            ) -> None:
        sandbox = self.sandboxes.get(pending.sandbox_id)
        if sandbox is None:
            return  # removed since its request was checked
        transport: spdy.Transport
        if upgrade.websocket:
            transport = WebSocketTransport(WebSocket(reader, writer, on_traffic=idle.touch))
        else:
            transport = spdy.StreamTransport(reader, writer, on_traffic=idle.touch)
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


@dataclass(frozen=True)
class Upgrade:
    """How a checked request is to be served: the transport, the agreed subprotocol ("" when a SPDY
    client offered none) and the 101 answer that starts it."""

    websocket: bool
    version: str
    response: bytes


def _upgrade(req: Request, pending: Pending) -> Upgrade:
    """Check the upgrade a request asks for against what its endpoint speaks; BadRequest if it cannot be
    served."""
    forward = isinstance(pending, PortForwardRequest)
    if _is_websocket(req):
        version = protocol.negotiate(req.tokens("sec-websocket-protocol"),
                                     (protocol.WS_PORT_FORWARD,) if forward else protocol.WS_REMOTECOMMAND,
                                     "Sec-WebSocket-Protocol")
        key = req.header("sec-websocket-key")
        if not key or req.header("sec-websocket-version") != "13":
            raise BadRequest(400, "a WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13")
        return Upgrade(True, version, protocol.response(101, "Switching Protocols", {
            "Upgrade": ["websocket"], "Connection": ["Upgrade"],
            "Sec-WebSocket-Accept": [accept_key(key)], "Sec-WebSocket-Protocol": [version]}))
    if "spdy/3.1" not in [t.lower() for t in req.tokens("upgrade")]:
        raise BadRequest(400, "this endpoint needs an upgrade to SPDY/3.1 or websocket")
    offered = req.tokens(protocol.PROTOCOL_HEADER)
    supported = (protocol.PORT_FORWARD,) if forward else protocol.SPDY_REMOTECOMMAND
    version = protocol.negotiate(offered, supported, "X-Accepted-Stream-Protocol-Versions") if offered else ""
    headers = {"Connection": ["Upgrade"], "Upgrade": ["SPDY/3.1"]}
    if version:
        headers["X-Stream-Protocol-Version"] = [version]
    return Upgrade(False, version, protocol.response(101, "Switching Protocols", headers))


def _listen(address: str, port: int) -> socket.socket:
    """The listening socket (blocking: the address may be a name to resolve)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.create_server((address, port), family=family, backlog=ACCEPT_BACKLOG)
    sock.setblocking(False)
    return sock


def _connect_in_netns(netns: str, port: int) -> socket.socket:
    """Blocking, on a throw-away thread: the socket stays bound to the namespace it was made in."""
    enter_namespaces(PodNamespaces(net=netns))
    return socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)


def _connector(sandbox: Sandbox) -> portforward.Connector:
    netns = sandbox.netns_path

    async def connect(port: int) -> socket.socket:
        # A thread of its own either way, not the loop's pool: a connect can wait CONNECT_TIMEOUT (a port
        # that drops SYNs), and a client may ask for many at once.
        if sandbox.spec.host_network or not netns:
            sock = await run_in_thread(lambda: socket.create_connection(("127.0.0.1", port), CONNECT_TIMEOUT))
        else:
            sock = await run_in_thread(lambda: _connect_in_netns(netns, port))
        sock.setblocking(False)
        return sock

    return connect
