"""conmon, driven the way CRI-O drives it: one monitor per container that owns its stdio, writes the
CRI log and the exit file, so containers outlive crishim; and `conmon --exec --sync` for ExecSync."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crishim.container import exec_cgroup
from crishim.container.oci import OCIRuntimeError, RuntimeHandler
from crishim.errors import DeadlineExceeded

log = logging.getLogger(__name__)

# How long SIGKILLed exec processes may take to leave their cgroup.
KILL_WAIT = 10.0


@dataclass(frozen=True)
class Conmon:
    path: str
    socket_dir: str  # conmon puts attach-socket symlinks here; keep the path short
    log_size_max: int = -1


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


class _SyncPipe:
    """The read end of conmon's sync pipe as an asyncio stream of JSON messages."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.reader: asyncio.StreamReader | None = None
        self.transport: asyncio.ReadTransport | None = None

    async def open(self) -> None:
        os.close(self.write_fd)
        self.write_fd = -1
        loop = asyncio.get_running_loop()
        self.reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(self.reader)
        self.transport, _ = await loop.connect_read_pipe(
            lambda: protocol, os.fdopen(self.read_fd, "rb", buffering=0))

    async def message(self) -> dict[str, Any] | None:
        """The next message, or None once conmon closed the pipe without one."""
        assert self.reader is not None
        line = await self.reader.readline()
        if not line.strip():
            return None
        msg: dict[str, Any] = json.loads(line)
        return msg

    def close(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
        if self.transport is not None:
            self.transport.close()
        else:
            os.close(self.read_fd)


def remove_attach_link(socket_dir: str, uuid: str, bundle: str) -> None:
    """Blocking: conmon's attach-socket symlink to `bundle`. It is named after the uuid conmon was given,
    cut short where `socket_dir/<uuid>/attach` would not fit a socket address (a long run_dir): looked
    for under the full name first, then by its target."""
    full = os.path.join(socket_dir, uuid)
    with contextlib.suppress(OSError):
        if os.readlink(full) == bundle:
            os.unlink(full)
            return
    for link, target in _attach_links(socket_dir):  # only where conmon cut the name: a long socket_dir
        if target == bundle and uuid.startswith(os.path.basename(link)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            return


def remove_stray_attach_links(socket_dir: str) -> list[str]:
    """Blocking: conmon's attach-socket symlinks whose bundle is gone (a removal or an exec a crash cut
    short); returns them. Told apart by target, as their names may be cut short."""
    removed = []
    for link, target in _attach_links(socket_dir):
        if not os.path.isdir(target):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            removed.append(link)
    return removed


def _attach_links(socket_dir: str) -> list[tuple[str, str]]:
    found = []
    with os.scandir(socket_dir) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.is_symlink():
                    found.append((entry.path, os.readlink(entry.path)))
    return found


def _common_args(conmon: Conmon, handler: RuntimeHandler, container_id: str, uuid: str, name: str,
                 bundle: str, pid_file: str, log_path: str) -> list[str]:
    return [
        conmon.path, "--api-version", "1", "-c", container_id, "-u", uuid, "-n", name,
        "-r", handler.binary, "--runtime-arg", f"--root={handler.root}", "-b", bundle,
        "-p", pid_file, "-l", f"k8s-file:{log_path}", "--log-level", "info",
        "--log-size-max", str(conmon.log_size_max), "--socket-dir-path", conmon.socket_dir,
        # Its files are read back at once (exec) or copied by crishim (crilog): no fsync on exit.
        "--no-sync-log",
    ]


async def _spawn(argv: list[str], cwd: str, pipe: _SyncPipe, start_fd: int | None
                 ) -> asyncio.subprocess.Process:
    # GLib converts conmon's arguments from the locale's charset: under C, a container name or log
    # path with any non-ASCII character makes conmon exit before it says a word.
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_CTYPE": "C.UTF-8",
           "_OCI_SYNCPIPE": str(pipe.write_fd)}
    fds = [pipe.write_fd]
    if start_fd is not None:
        env["_OCI_STARTPIPE"] = str(start_fd)
        fds.append(start_fd)
    return await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, pass_fds=fds, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True)


async def create(conmon: Conmon, handler: RuntimeHandler, *, container_id: str, name: str,
                 bundle: str, log_path: str, exit_dir: str, stdin: bool, tty: bool,
                 stdin_once: bool = False, sync_wait: float = 60.0) -> tuple[int, int]:
    """Start a monitor that runs `runtime create`; returns (container pid, conmon pid)."""
    pid_file = f"{bundle}/pidfile"
    conmon_pid_file = f"{bundle}/conmon.pid"
    argv = [*_common_args(conmon, handler, container_id, container_id, name, bundle, pid_file,
                          log_path),
            "-P", conmon_pid_file, "--exit-dir", exit_dir, "--persist-dir", bundle]
    if stdin:
        argv.append("-i")
        if not stdin_once:
            # Otherwise conmon closes the container's stdin when the first attach client leaves.
            argv.append("--leave-stdin-open")
    if tty:
        argv.append("-t")
    pipe = _SyncPipe()
    start_read, start_write = os.pipe()
    try:
        proc = await _spawn(argv, bundle, pipe, start_read)
        os.close(start_read)
        start_read = -1
        await pipe.open()
        os.write(start_write, b"0")
        try:
            msg = await asyncio.wait_for(pipe.message(), sync_wait)
        except TimeoutError:
            raise OCIRuntimeError(f"conmon: no container pid after {sync_wait}s") from None
        await proc.wait()
    finally:
        pipe.close()
        os.close(start_write)
        if start_read >= 0:
            os.close(start_read)
    if msg is None or msg.get("data", -1) < 0:
        detail = str((msg or {}).get("message") or "conmon exited without a reason").strip()
        raise OCIRuntimeError(f"{handler.name} create {container_id}: {detail}")
    conmon_pid = int(await asyncio.to_thread(Path(conmon_pid_file).read_text))
    return int(msg["data"]), conmon_pid


async def exec_sync(conmon: Conmon, handler: RuntimeHandler, *, container_id: str, exec_id: str,
                    bundle: str, process_spec: str, log_path: str, cgroups_path: str, kill_after: float,
                    output_limit: int) -> ExecResult:
    """Run one process in the container and wait for it.

    The timeout `kill_after` (0: none) is ours, not conmon's whole-second `-T`: it runs from the
    moment the exec's pid is known, so a command is never ended before `kill_after` seconds since it
    started. When it expires, or the caller gives up, everything the exec started is killed (see
    exec_cgroup)."""
    cgroup = await asyncio.to_thread(exec_cgroup.create, cgroups_path, exec_id, handler.name)
    argv = [*_common_args(conmon, handler, container_id, exec_id, exec_id, bundle,
                          f"{bundle}/pidfile", log_path),
            "-e", "--exec-process-spec", process_spec, "--sync"]
    if cgroup is not None:
        argv.append(f"--runtime-opt=--cgroup={cgroup.runtime_arg}")
    pipe = _SyncPipe()
    proc: asyncio.subprocess.Process | None = None
    exec_pid = 0
    try:
        proc = await _spawn(argv, bundle, pipe, None)
        await pipe.open()
        started = await pipe.message()
        if started is None or started.get("data", -1) < 0:
            detail = (started or {}).get("message") or "conmon exited without a reason"
            raise OCIRuntimeError(f"exec in {container_id}: {detail}")
        exec_pid = int(started["data"])
        try:
            finished = await _next_message_within(pipe, kill_after)
        except TimeoutError:
            await _kill_exec(cgroup, exec_pid)
            with contextlib.suppress(TimeoutError):  # it reports the kill and exits
                await asyncio.wait_for(proc.wait(), KILL_WAIT)
            raise DeadlineExceeded(f"exec in {container_id}: timeout {kill_after:g}s exceeded; the "
                                   "command and every process it started were killed") from None
        await proc.wait()
    finally:
        pipe.close()
        if proc is not None and proc.returncode is None:
            # Cancelled (the client gave up) or conmon is stuck: nothing the exec started may
            # outlive the call.
            await _kill_exec(cgroup, exec_pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if cgroup is not None:
            await asyncio.to_thread(exec_cgroup.remove, cgroup)
    if finished is None:
        raise OCIRuntimeError(f"exec in {container_id}: conmon exited without an exit code")
    if finished.get("data", -1) < 0:
        raise OCIRuntimeError(f"exec in {container_id}: {finished.get('message') or 'failed'}")
    stdout, stderr = await asyncio.to_thread(read_cri_log, log_path, output_limit)
    return ExecResult(int(finished["data"]), stdout, stderr)


async def _next_message_within(pipe: _SyncPipe, within: float) -> dict[str, Any] | None:
    """The next message; TimeoutError once `within` seconds (0: never) have passed by the loop's
    monotonic clock, and never earlier. A read cut short leaves the pipe's buffer intact."""
    read = asyncio.ensure_future(pipe.message())
    if within <= 0:
        return await read
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    try:
        while not read.done():
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError
            await asyncio.wait({read}, timeout=left)
    finally:
        read.cancel()
    return read.result()


async def _kill_exec(cgroup: exec_cgroup.ExecCgroup | None, exec_pid: int) -> None:
    if cgroup is not None:
        if await asyncio.to_thread(exec_cgroup.kill_all, cgroup, KILL_WAIT):
            return
        log.warning("exec processes survived SIGKILL", extra={"cgroup": str(cgroup.path)})
    if exec_pid <= 0:
        return
    # No cgroup of its own (no usable hierarchy): its process group is what can be reached.
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(exec_pid, signal.SIGKILL)


def read_cri_log(path: str, limit: int) -> tuple[bytes, bytes]:
    """Blocking: split a CRI log (`<time> <stream> <F|P> <text>`) back into the two streams' bytes,
    keeping at most `limit` bytes of each; reads line by line so a huge log costs no memory."""
    streams: dict[bytes, bytearray] = {b"stdout": bytearray(), b"stderr": bytearray()}
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after the loop
    except FileNotFoundError:
        return b"", b""
    with f:
        for line in f:
            parts = line.rstrip(b"\n").split(b" ", 3)
            if len(parts) < 3 or parts[1] not in streams:
                continue
            out = streams[parts[1]]
            if len(out) < limit:
                out += (parts[3] if len(parts) == 4 else b"") + (b"\n" if parts[2] == b"F" else b"")
            if all(len(s) >= limit for s in streams.values()):
                break
    return bytes(streams[b"stdout"][:limit]), bytes(streams[b"stderr"][:limit])
