"""`crishim serve`: own the socket, serve both CRI services on it (and crishim's admin socket beside it),
shut down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import resource
import signal
import socket
import sys
from pathlib import Path
from typing import IO

import grpc

from crishim.admin import admin_socket_path
from crishim.admin.server import AdminServer
from crishim.config import Config
from crishim.runtime import Runtime
from crishim.server.service import cri_handlers

log = logging.getLogger(__name__)

# kubelet sends PodSandboxStatus of every pod plus full lists; the default 4 MiB is too small at scale.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# RPCs one connection may have in flight; further ones wait in the client. Without a limit a client that
# opens streams and never reads their answers grows the server without bound, and past a few thousand
# such streams grpc starts cancelling the calls of every other client. kubelet stays far below this.
MAX_CONCURRENT_STREAMS = 1000


class AlreadyServing(Exception):
    """Another crishim owns the socket."""


def _socket_is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def claim_socket(path: Path) -> IO[bytes]:
    """Take the lock beside the socket and clear a stale socket file.

    The lock, not the socket file, decides who serves: it is released by the kernel when its holder dies
    (even by SIGKILL), so a dead server's socket can be replaced while a live one is never taken over.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path.with_name(path.name + ".lock"), "wb",  # noqa: SIM115 - held for the process lifetime
                opener=lambda name, flags: os.open(name, flags, 0o600))
    os.fchmod(lock.fileno(), 0o600)  # made 0644 by an older crishim
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise AlreadyServing(f"another crishim is serving on {path}") from None
    if path.exists() or path.is_symlink():
        if _socket_is_live(path):
            lock.close()
            raise AlreadyServing(f"another crishim is serving on {path}")
        path.unlink()
    return lock


def _use_pidfd_child_watcher() -> None:
    """Reap plugin and runtime processes through pidfds on the loop.

    Python 3.11's default watcher starts a thread per child process; with a CNI chain of four plugins
    per pod that thread churn was the largest cost on the event loop. 3.12+ picks pidfds by itself.
    """
    if sys.version_info < (3, 12):
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)


def raise_nofile_limit() -> None:
    """Soft open-files limit up to the hard one, as containerd's unit does with LimitNOFILE: pods, plugins,
    conmon sockets and streams all hold descriptors, and the usual soft 1024 runs out long before the
    hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("raised the open files limit", extra={"from": soft, "to": hard})


async def serve(config: Config, ready: asyncio.Event | None = None) -> None:
    sock_path = Path(config.socket)
    admin_path = admin_socket_path(config.run_dir)
    lock = claim_socket(sock_path)
    raise_nofile_limit()
    try:
        admin_lock = claim_socket(admin_path)
    except AlreadyServing:
        lock.close()
        raise
    _use_pidfd_child_watcher()
    runtime = Runtime(config)
    await runtime.start()
    admin = AdminServer(admin_path, runtime.images, config.connection_idle_timeout)
    await admin.start()
    idle_ms = round(config.connection_idle_timeout * 1000)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
            ("grpc.max_connection_idle_ms", idle_ms),
            ("grpc.server_handshake_timeout_ms", idle_ms),
        ]
    )
    server.add_generic_rpc_handlers(cri_handlers(runtime))
    server.add_insecure_port(f"unix:{sock_path}")
    old_umask = os.umask(0o117)
    try:
        await server.start()
    finally:
        os.umask(old_umask)
    os.chmod(sock_path, 0o660)
    log.info("serving CRI", extra={"socket": str(sock_path)})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
        log.info("shutting down", extra={"grace_seconds": config.shutdown_grace})
        await server.stop(config.shutdown_grace)
    finally:
        await admin.close()  # imports in flight are cancelled and cleaned up before the store closes
        await runtime.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock_path)
        lock.close()
        admin_lock.close()
