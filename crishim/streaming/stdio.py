"""Exec and attach: what sits behind the remotecommand channels, and the pump between the two.

Exec runs `<runtime> exec --process spec.json ID` as a child of crishim. With a tty the runtime's own
stdio is a pty we allocate: the runtime makes the container process's terminal and copies between the two
(in raw mode on ours), and forwards SIGWINCH, so a resize is TIOCSWINSZ on our master plus SIGWINCH to
the runtime. The process pid comes from `--pid-file`; it is SIGKILLed when the client goes away.

Attach talks to conmon's attach socket (SOCK_SEQPACKET; each packet from conmon starts with the pipe it
came from, 2 stdout / 3 stderr; stdin goes in raw) and resizes through conmon's control FIFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import struct
import termios
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from crishim.streaming import protocol
from crishim.streaming.channels import STDERR, STDOUT, Channels, Size

log = logging.getLogger(__name__)

READ_SIZE = 32 * 1024
EOT = b"\x04"
ABANDON_WAIT = 10.0
PID_POLL = 0.02
ATTACH_PIPE_STDOUT = 2
ATTACH_PIPE_STDERR = 3
ATTACH_READ = 8192 + 1


class Target(Protocol):
    async def write_stdin(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    def output(self) -> AsyncIterator[tuple[int, bytes]]:
        """(STDOUT or STDERR, bytes) until the target's output ends."""
        ...

    async def resize(self, size: Size) -> None: ...

    async def wait(self) -> dict[str, Any] | None:
        """The error-channel status once the target is done (None: success)."""
        ...

    async def abandon(self) -> None:
        """The client left: exec kills its process, attach just lets go."""
        ...


async def pump(channels: Channels, target: Target, stdin: bool) -> None:
    """Copy between client and target until the target is done or the client leaves."""
    async def copy_stdin() -> None:
        while data := await channels.read_stdin():
            await target.write_stdin(data)
        await target.close_stdin()

    async def copy_resizes() -> None:
        async for size in channels.resizes():
            await target.resize(size)

    async def copy_output() -> None:
        async for channel, data in target.output():
            await channels.write(channel, data)

    async def finished() -> dict[str, Any] | None:
        await copy_output()
        return await target.wait()

    helpers = [asyncio.ensure_future(copy_resizes())]
    if stdin:
        helpers.append(asyncio.ensure_future(copy_stdin()))
    done_task = asyncio.ensure_future(finished())
    gone = asyncio.ensure_future(channels.gone.wait())
    try:
        await asyncio.wait({done_task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if done_task.done() and not done_task.cancelled() and done_task.exception() is None:
            await channels.finish(done_task.result())
            return
        if done_task.done() and (exc := done_task.exception()) is not None and not channels.gone.is_set():
            log.warning("stream target failed", extra={"error": str(exc)})
            await channels.finish(protocol.failure_status(str(exc)))
            return
        await target.abandon()
        await channels.finish(None)
    finally:
        for task in [*helpers, done_task, gone]:
            task.cancel()
        await asyncio.gather(*helpers, done_task, gone, return_exceptions=True)


def _raw_input(fd: int) -> None:
    """Input passes untouched (the container's terminal echoes and edits); output keeps NL -> CRNL, as
    the container's own terminal would have produced it."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
               | termios.IGNCR | termios.ICRNL | termios.IXON)
    oflag |= termios.OPOST | termios.ONLCR
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


def _set_size(fd: int, size: Size) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.height, size.width, 0, 0))


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _FdReader:
    """Reads a pipe or pty master without blocking the loop; a pty's EIO (slave side gone) is EOF."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)

    async def read(self) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            try:
                return os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                pass
            except OSError:
                return b""
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self.fd, _wake, ready)
            try:
                await ready
            finally:
                loop.remove_reader(self.fd)


async def _write_fd(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
            view = view[n:]
            continue
        except BlockingIOError:
            pass
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_writer(fd, _wake, ready)
        try:
            await ready
        finally:
            loop.remove_writer(fd)


class ExecTarget:
    """One exec'd process, started by `start()` and cleaned up by `close()`."""

    def __init__(self, argv_prefix: list[str], container_id: str, process: dict[str, Any],
                 work_dir: Path, options_stdin: bool, stdout: bool, stderr: bool, tty: bool) -> None:
        self.argv_prefix = argv_prefix
        self.container_id = container_id
        self.process = dict(process, terminal=tty)
        self.work_dir = work_dir
        self.stdin = options_stdin
        self.stdout = stdout
        self.stderr = stderr
        self.tty = tty
        self.proc: asyncio.subprocess.Process | None = None
        self._fds: list[int] = []  # ours to close: the pty master or the pipe ends we keep
        self._stdin_fd = -1
        self._readers: list[tuple[int, _FdReader]] = []
        self._master = -1

    async def start(self, size: Size | None = None) -> None:
        if size is not None and size.width > 0 and size.height > 0:
            self.process["consoleSize"] = {"height": size.height, "width": size.width}
        await asyncio.to_thread(self._write_spec)
        argv = [*self.argv_prefix, "exec", "--process", str(self.work_dir / "process.json"),
                "--pid-file", str(self.work_dir / "pid"), self.container_id]
        child: list[int] = []
        try:
            if self.tty:
                self._master, slave = os.openpty()
                self._fds.append(self._master)
                child.append(slave)
                _raw_input(slave)
                if size is not None:
                    _set_size(self._master, size)
                stdio = {"stdin": slave, "stdout": slave, "stderr": slave}
                self._stdin_fd = self._master
                self._readers.append((STDOUT, _FdReader(self._master)))
            else:
                stdio = {}
                for name, wanted, channel in (("stdout", self.stdout, STDOUT),
                                              ("stderr", self.stderr, STDERR)):
                    if wanted:
                        r, w = os.pipe()
                        self._fds.append(r)
                        child.append(w)
                        stdio[name] = w
                        self._readers.append((channel, _FdReader(r)))
                    else:
                        stdio[name] = asyncio.subprocess.DEVNULL
                if self.stdin:
                    r, w = os.pipe()
                    self._fds.append(w)
                    child.append(r)
                    stdio["stdin"] = r
                    self._stdin_fd = w
                    os.set_blocking(w, False)
                else:
                    stdio["stdin"] = asyncio.subprocess.DEVNULL
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=stdio["stdin"], stdout=stdio["stdout"], stderr=stdio["stderr"],
                start_new_session=True)
        finally:
            for fd in child:
                os.close(fd)

    def _write_spec(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "process.json").write_text(json.dumps(self.process))

    async def write_stdin(self, data: bytes) -> None:
        if self._stdin_fd >= 0:
            try:
                await _write_fd(self._stdin_fd, data)
            except OSError:
                self._stdin_fd = -1

    async def close_stdin(self) -> None:
        if self.tty:
            await self.write_stdin(EOT)
        elif self._stdin_fd >= 0:
            self._fds.remove(self._stdin_fd)
            os.close(self._stdin_fd)
            self._stdin_fd = -1

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(16)

        async def drain(channel: int, reader: _FdReader) -> None:
            while data := await reader.read():
                await queue.put((channel, data))
            await queue.put(None)

        tasks = [asyncio.ensure_future(drain(c, r)) for c, r in self._readers]
        try:
            open_readers = len(tasks)
            while open_readers:
                item = await queue.get()
                if item is None:
                    open_readers -= 1
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()

    async def resize(self, size: Size) -> None:
        if self._master < 0 or size.width <= 0 or size.height <= 0 or self.proc is None:
            return
        _set_size(self._master, size)
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGWINCH)

    async def wait(self) -> dict[str, Any] | None:
        assert self.proc is not None
        code = await self.proc.wait()
        if code == 0:
            return None
        if code < 0:
            code = 128 - code
        return protocol.exit_code_status(code, " ".join(self.process.get("args", [])))

    async def abandon(self) -> None:
        """SIGKILL the exec'd process; the runtime then exits with it.

        The runtime writes the pid file only once the process runs, so a client that leaves at once may
        find none yet: look again until it shows or the runtime exits. Killing the runtime instead would
        leave the process running in the container; that is only the last resort after ABANDON_WAIT.
        """
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ABANDON_WAIT
        exited = asyncio.ensure_future(self.proc.wait())
        pid = 0
        while not exited.done() and loop.time() < deadline:
            if pid := await asyncio.to_thread(self._read_pid):
                break
            await asyncio.wait({exited}, timeout=PID_POLL)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.wait({exited}, timeout=max(0.0, deadline - loop.time()))
        if not exited.done():
            self.proc.kill()
        await exited

    def _read_pid(self) -> int:
        try:
            return int((self.work_dir / "pid").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            await self.abandon()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        await asyncio.to_thread(shutil.rmtree, self.work_dir, True)


class AttachTarget:
    """An attach-socket connection to a container's conmon."""

    def __init__(self, socket_path: str, ctl_path: str, stdin: bool, stdout: bool, stderr: bool) -> None:
        self.socket_path = socket_path
        self.ctl_path = ctl_path
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.sock: socket.socket | None = None

    async def start(self, size: Size | None = None) -> None:
        """`size`: the client's first terminal size, passed to conmon like any later one."""
        if size is not None:
            await self.resize(size)
        # Connect through /proc/self/fd: the socket's own path may be longer than sun_path allows.
        dir_fd = await asyncio.to_thread(os.open, os.path.dirname(self.socket_path), os.O_PATH)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(
                sock, f"/proc/self/fd/{dir_fd}/{os.path.basename(self.socket_path)}")
        except OSError:
            sock.close()
            raise
        finally:
            os.close(dir_fd)
        self.sock = sock

    async def write_stdin(self, data: bytes) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def close_stdin(self) -> None:
        """conmon sees the half-close and, unless told to leave stdin open, closes the container's."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                packet = await loop.sock_recv(self.sock, ATTACH_READ)
            except OSError:
                return
            if not packet:
                return
            pipe, data = packet[0], packet[1:]
            if pipe == ATTACH_PIPE_STDOUT and self.stdout:
                yield STDOUT, data
            elif pipe == ATTACH_PIPE_STDERR and self.stderr:
                yield STDERR, data

    async def resize(self, size: Size) -> None:
        if size.width <= 0 or size.height <= 0:
            return

        def write() -> None:
            fd = os.open(self.ctl_path, os.O_WRONLY | os.O_NONBLOCK)
            try:
                os.write(fd, f"1 {size.height} {size.width}\n".encode())
            finally:
                os.close(fd)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            log.warning("attach resize failed", extra={"ctl": self.ctl_path, "error": str(exc)})

    async def wait(self) -> dict[str, Any] | None:
        return None

    async def abandon(self) -> None:
        await self.close()

    async def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
