"""conmon, driven the way CRI-O drives it: one monitor per container that owns its stdio, writes the
CRI log and the exit file, so containers outlive crishim; and `conmon --exec --sync` for ExecSync."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crishim.container.oci import OCIRuntimeError, RuntimeHandler
from crishim.errors import DeadlineExceeded


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


def _common_args(conmon: Conmon, handler: RuntimeHandler, container_id: str, uuid: str, name: str,
                 bundle: str, pid_file: str, log_path: str) -> list[str]:
    return [
        conmon.path, "--api-version", "1", "-c", container_id, "-u", uuid, "-n", name,
        "-r", handler.binary, "--runtime-arg", f"--root={handler.root}", "-b", bundle,
        "-p", pid_file, "-l", f"k8s-file:{log_path}", "--log-level", "info",
        "--log-size-max", str(conmon.log_size_max), "--socket-dir-path", conmon.socket_dir,
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
                    bundle: str, process_spec: str, log_path: str, kill_after: int,
                    output_limit: int) -> ExecResult:
    """Run one process in the container and wait for it; on timeout conmon kills its process group."""
    argv = [*_common_args(conmon, handler, container_id, exec_id, exec_id, bundle,
                          f"{bundle}/pidfile", log_path),
            "-e", "--exec-process-spec", process_spec, "--sync"]
    if kill_after > 0:
        argv += ["-T", str(kill_after)]
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
        finished = await pipe.message()
        await proc.wait()
    finally:
        pipe.close()
        if proc is not None and proc.returncode is None:
            # Cancelled (the client gave up): the exec'd process must not outlive the call.
            _kill_group(exec_pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if finished is None:
        raise OCIRuntimeError(f"exec in {container_id}: conmon exited without an exit code")
    if finished.get("data", -1) < 0:
        message = str(finished.get("message", ""))
        if "timed out" in message:
            raise DeadlineExceeded(f"exec in {container_id}: timeout {kill_after}s exceeded")
        raise OCIRuntimeError(f"exec in {container_id}: {message or 'failed'}")
    stdout, stderr = await asyncio.to_thread(read_cri_log, log_path, output_limit)
    return ExecResult(int(finished["data"]), stdout, stderr)


def _kill_group(pid: int) -> None:
    if pid <= 0:
        return
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)


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


async def reopen_log(bundle: str) -> None:
    """Ask the monitor, through its control FIFO, to reopen the log file (after a rotation)."""
    def write() -> None:
        fd = os.open(f"{bundle}/ctl", os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, b"2 0 0\n")
        finally:
            os.close(fd)

    try:
        await asyncio.to_thread(write)
    except OSError as exc:
        raise OCIRuntimeError(f"cannot reach the container monitor's control FIFO: {exc}") from exc
