"""The CRI log of a container, written by crishim from what conmon records.

conmon reads a container's output at most 8 KiB at a time and writes one record per read, so a long
line becomes many small `P` records closed by an `F` record that is empty when the line filled the last
read. kubelet's log reader (pkg/kubelet/kuberuntime/logs) and every tool that takes an `F` record for
one message expect what containerd writes (its CRI logger): a line is one `F` record unless it is
longer than 16 KiB, when it is cut into 16 KiB `P` records and the remainder is the `F` record; "\\r\\n"
ends a line as "\\n" does; what a stream left without a newline when it ended is a `P` record.

So conmon writes its records to a file of its own in the container's directory, and one thread here
(`LogCopier`) rewrites them into the file at the container's log_path:
- it hears of new records through inotify on the directory: nothing polls;
- ReopenContainerLog (kubelet's log rotation) reopens crishim's file; conmon is not involved;
- conmon's file never holds much: once 1 MiB of it was copied it is renamed aside and conmon is told to
  reopen its path (through its control FIFO); the old file is finished when the new one appears;
- how far the copy got (inode and offset) is kept beside conmon's file, so a restarted crishim goes on
  where the last one stopped, and what containers wrote while no crishim ran is waiting in conmon's
  file. A crishim that is killed loses at most the unfinished line it held, as containerd does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import select
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from crishim import inotify

log = logging.getLogger(__name__)

T = TypeVar("T")

# containerd's max_container_log_line_size default: longer lines are cut into records this long.
MAX_LINE = 16 * 1024
CONMON_FILE = "conmon-output"  # what conmon writes, in the container's directory
ROTATED_FILE = CONMON_FILE + ".1"
PROGRESS_FILE = CONMON_FILE + ".copied"
ROTATE_AFTER = 1 << 20
READ_CHUNK = 1 << 18
# Bytes of one container copied per turn when others are waiting: a chatty one cannot starve the rest.
TURN_BYTES = 4 << 20
LOG_MODE = 0o640
_WATCH_MASK = inotify.IN_MODIFY | inotify.IN_CREATE | inotify.IN_MOVED_TO | inotify.IN_CLOSE_WRITE




def _record(stamp: bytes, stream: bytes, tag: bytes, text: bytes | bytearray) -> bytes:
    return b"%s %s %s %s\n" % (stamp, stream, tag, text)


class LineAssembler:
    """conmon's records in, containerd-shaped CRI records out; one unfinished line per stream."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._pending: dict[bytes, bytearray] = {}
        self._stamps: dict[bytes, bytes] = {}

    def feed_block(self, block: bytes, out: list[bytes]) -> None:
        """Whole records of conmon's, each ending in a newline. Most are lines that fit one read of
        conmon's: such an `F` record, with no unfinished line before it in its stream and no "\\r" at
        its end, is already the CRI log's record and is passed on as it is, so only the few records
        around conmon's cuts (found with bytes.find) are taken apart one by one."""
        special: set[int] = set()
        for stream in [s for s, pending in self._pending.items() if pending]:
            self._next_of(stream, block, 0, special)
        tag = block.find(b" P ")
        while tag >= 0:
            start = block.rfind(b"\n", 0, tag) + 1
            head = block[start:tag].split(b" ")
            if len(head) == 2:  # `<time> <stream>` before it: a P record (else text that says " P ")
                special.add(start)
                self._next_of(head[1], block, block.index(b"\n", tag) + 1, special)
            tag = block.find(b" P ", tag + 3)
        crlf = block.find(b"\r\n")
        while crlf >= 0:  # the "\r" goes
            special.add(block.rfind(b"\n", 0, crlf) + 1)
            crlf = block.find(b"\r\n", crlf + 2)
        pos = 0
        for start in sorted(special):
            if start > pos:
                out.append(block[pos:start])
            end = block.index(b"\n", start)
            self.feed(block[start:end], out)
            pos = end + 1
        if pos < len(block):
            out.append(block[pos:])

    @staticmethod
    def _next_of(stream: bytes, block: bytes, pos: int, special: set[int]) -> None:
        """The first record of `stream` from `pos` (a record's start) on: it goes on the unfinished
        line."""
        field = b" %s " % stream
        hit = block.find(field, pos)
        while hit >= 0:
            start = block.rfind(b"\n", 0, hit) + 1
            if b" " not in block[start:hit]:  # right after the time: the record's stream
                special.add(start)
                return
            hit = block.find(field, hit + 1)

    def feed(self, record: bytes, out: list[bytes]) -> None:
        """One record of conmon's (`<time> <stream> <P|F> <text>`, without its newline)."""
        parts = record.split(b" ", 3)
        if len(parts) != 4 or parts[2] not in (b"P", b"F"):
            return
        stamp, stream, tag, text = parts
        pending = self._pending.setdefault(stream, bytearray())
        self._stamps[stream] = stamp
        pending += text
        if tag == b"F":
            if pending.endswith(b"\r"):
                del pending[-1]
            self._cut(stamp, stream, pending, out)
            out.append(_record(stamp, stream, b"F", pending))
            pending.clear()
        else:
            # A trailing "\r" may be half of the line's "\r\n": it does not count yet.
            self._cut(stamp, stream, pending, out, int(pending.endswith(b"\r")))

    def _cut(self, stamp: bytes, stream: bytes, pending: bytearray, out: list[bytes],
             slack: int = 0) -> None:
        while len(pending) > self.max_line + slack:
            out.append(_record(stamp, stream, b"P", pending[:self.max_line]))
            del pending[:self.max_line]

    def flush(self, out: list[bytes]) -> None:
        """The streams ended (or crishim stops): unfinished lines become `P` records."""
        for stream, pending in self._pending.items():
            if pending:
                self._cut(self._stamps[stream], stream, pending, out)
                out.append(_record(self._stamps[stream], stream, b"P", pending))
                pending.clear()


class _Copy:
    """One container's copy: conmon's file in, the CRI log out."""

    def __init__(self, directory: str, log_path: str) -> None:
        self.dir = directory
        self.log_path = log_path
        self.assembler = LineAssembler()
        self.out_fd = -1
        self.in_fd = -1
        self.in_ino = 0
        self.offset = 0  # of the next byte to read from in_fd
        self.partial = b""  # an incomplete record read from in_fd
        self.progress_fd = -1
        self.wd = -1
        self.rotating = False
        self.write_failed = False

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)


def _ino(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return 0


class LogCopier:
    """The thread that writes every tracked container's CRI log (blocking file I/O stays off the
    event loop; one thread for all containers keeps the cost per container at two fds)."""

    def __init__(self) -> None:
        self._copies: dict[str, _Copy] = {}
        self._by_wd: dict[int, _Copy] = {}
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.SimpleQueue())
        self._inotify = -1
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._due: dict[int, _Copy] = {}  # by watch: copies with output not copied yet

    def start(self) -> None:
        if self._thread is not None:
            return
        self._inotify = inotify.init()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="crishim-logs", daemon=True)
        self._thread.start()

    def tracks(self, cid: str) -> bool:
        return cid in self._copies

    async def track(self, cid: str, directory: str, log_path: str) -> None:
        """Copy what conmon records in `directory` to `log_path`, from where an earlier copy stopped."""
        copy = _Copy(directory, log_path)
        self._copies[cid] = copy
        try:
            await self._call(lambda: self._open(copy))
        except BaseException:
            self._copies.pop(cid, None)
            await self._call(lambda: self._close(copy))
            raise

    async def reopen(self, cid: str) -> None:
        """ReopenContainerLog: later records go to a new file at the log path."""
        copy = self._copies[cid]
        await self._call(lambda: self._reopen(copy))

    async def finish(self, cid: str) -> None:
        """conmon is gone: copy the rest and end unfinished lines. Later records, if any, still come."""
        copy = self._copies.get(cid)
        if copy is not None:
            await self._call(lambda: self._finish(copy))

    async def untrack(self, cid: str) -> None:
        """Finish, then let go of the container's files."""
        copy = self._copies.pop(cid, None)
        if copy is not None:
            await self._call(lambda: self._finish_and_close(copy))

    async def close(self) -> None:
        """End the unfinished lines and stop: the next crishim copies the rest (see the progress)."""
        thread, self._thread = self._thread, None  # calls made from now on are refused
        if thread is None:
            return
        copies = list(self._copies.values())
        self._copies.clear()

        def stop() -> None:
            for copy in copies:
                self._end_lines(copy)
                self._close(copy)
            self._stopping = True

        await asyncio.wrap_future(self._submit(stop))
        await asyncio.to_thread(thread.join)
        for fd in (self._inotify, self._wake_r, self._wake_w):
            os.close(fd)

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._thread is None:
            raise RuntimeError("the log copier is not running")
        return await asyncio.wrap_future(self._submit(fn))

    def _submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._commands.put((fn, future))
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the thread all the same
            os.write(self._wake_w, b"x")
        return future

    # ---- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._inotify, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            poller.poll(0 if self._due else None)
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
            while not self._commands.empty():
                fn, future = self._commands.get()
                try:
                    future.set_result(fn())
                except BaseException as exc:  # the caller's to handle
                    future.set_exception(exc)
            for event in inotify.read_events(self._inotify):
                if event.mask & inotify.IN_IGNORED:
                    self._by_wd.pop(event.wd, None)
                elif event.name in (CONMON_FILE, ROTATED_FILE) and event.wd in self._by_wd:
                    self._due[event.wd] = self._by_wd[event.wd]
            for wd, copy in list(self._due.items()):
                try:
                    more = self._pump(copy, TURN_BYTES)
                except Exception as exc:  # the thread serves every container: it must go on
                    log.warning("copying a container log failed",
                                extra={"dir": copy.dir, "error": str(exc)})
                    more = False
                if not more or self._by_wd.get(wd) is not copy:
                    self._due.pop(wd, None)

    def _open(self, copy: _Copy) -> None:
        copy.progress_fd = os.open(copy.path(PROGRESS_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        saved_ino, saved_offset = _parse_progress(os.pread(copy.progress_fd, 64, 0))
        copy.out_fd = os.open(copy.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, LOG_MODE)
        copy.wd = inotify.add_watch(self._inotify, copy.dir, _WATCH_MASK)
        self._by_wd[copy.wd] = copy
        rotated, current = copy.path(ROTATED_FILE), copy.path(CONMON_FILE)
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(rotated, os.O_RDONLY | os.O_CLOEXEC)
            self._take(copy, fd, saved_offset if os.fstat(fd).st_ino == saved_ino else 0)
            if not os.path.exists(current):
                # Renamed aside by a crishim that stopped before conmon reopened: conmon still writes
                # here (and a pending reopen shows up as a new file, as a rotation's does).
                os.rename(rotated, current)
        if copy.in_fd < 0:
            with contextlib.suppress(FileNotFoundError):  # conmon makes it when it starts
                fd = os.open(current, os.O_RDONLY | os.O_CLOEXEC)
                self._take(copy, fd, saved_offset if os.fstat(fd).st_ino == saved_ino else 0)
        self._pump(copy)

    def _take(self, copy: _Copy, fd: int, offset: int) -> None:
        copy.in_fd, copy.in_ino, copy.offset, copy.partial = fd, os.fstat(fd).st_ino, offset, b""

    def _pump(self, copy: _Copy, turn: int | None = None) -> bool:
        """Copy what is new (rotating conmon's file when due) and follow conmon to a new file;
        True if `turn` bytes were copied and there may be more."""
        if copy.in_fd >= 0 and self._copy_from(copy, turn):
            return True
        current = copy.path(CONMON_FILE)
        ino = _ino(current)
        if ino and ino != copy.in_ino:
            # conmon writes to a new file now; the old one got its last record before that.
            if copy.in_fd >= 0:
                self._copy_from(copy)
                os.close(copy.in_fd)
                copy.in_fd = -1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(copy.path(ROTATED_FILE))
            copy.rotating = False
            with contextlib.suppress(FileNotFoundError):  # replaced again already: the next event
                self._take(copy, os.open(current, os.O_RDONLY | os.O_CLOEXEC), 0)
                return self._copy_from(copy, turn)
        return False

    def _rotate(self, copy: _Copy) -> None:
        """Rename conmon's file aside and have conmon start a new one; `_pump` follows it there."""
        current = copy.path(CONMON_FILE)
        os.rename(current, copy.path(ROTATED_FILE))
        try:
            ask_conmon_to_reopen(copy.dir)
        except OSError:  # conmon is gone: nothing more will be written
            os.rename(copy.path(ROTATED_FILE), current)
        else:
            copy.rotating = True

    def _copy_from(self, copy: _Copy, turn: int | None = None) -> bool:
        """Copy to the end of conmon's file, or `turn` bytes of it (then True)."""
        copied = 0
        while data := os.pread(copy.in_fd, READ_CHUNK, copy.offset):
            copy.offset += len(data)
            copied += len(data)
            complete, _, copy.partial = (copy.partial + data).rpartition(b"\n")
            out: list[bytes] = []
            if complete:
                copy.assembler.feed_block(complete + b"\n", out)
            self._write(copy, out)
            if (copy.offset >= ROTATE_AFTER and not copy.rotating
                    and copy.in_ino == _ino(copy.path(CONMON_FILE))):
                self._rotate(copy)
            if turn is not None and copied >= turn:
                break
        progress = b"%d %d\n" % (copy.in_ino, copy.offset - len(copy.partial))
        os.pwrite(copy.progress_fd, progress.ljust(64), 0)
        return turn is not None and copied >= turn

    def _write(self, copy: _Copy, out: list[bytes]) -> None:
        data = memoryview(b"".join(out))
        try:
            while data:
                data = data[os.write(copy.out_fd, data):]
        except OSError as exc:
            # Like containerd: keep draining the container's output; say it once per file.
            if not copy.write_failed:
                log.warning("cannot write a container log", extra={"path": copy.log_path,
                                                                   "error": str(exc)})
            copy.write_failed = True

    def _reopen(self, copy: _Copy) -> None:
        fd = os.open(copy.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, LOG_MODE)
        os.close(copy.out_fd)
        copy.out_fd, copy.write_failed = fd, False

    def _finish(self, copy: _Copy) -> None:
        self._pump(copy)
        self._end_lines(copy)

    def _end_lines(self, copy: _Copy) -> None:
        out: list[bytes] = []
        copy.assembler.flush(out)
        self._write(copy, out)

    def _finish_and_close(self, copy: _Copy) -> None:
        try:
            self._finish(copy)
        finally:
            self._close(copy)

    def _close(self, copy: _Copy) -> None:
        if copy.wd >= 0 and self._by_wd.pop(copy.wd, None) is not None:
            inotify.rm_watch(self._inotify, copy.wd)
            self._due.pop(copy.wd, None)
        for fd in (copy.in_fd, copy.out_fd, copy.progress_fd):
            if fd >= 0:
                os.close(fd)
        copy.in_fd = copy.out_fd = copy.progress_fd = copy.wd = -1


def has_records(directory: str) -> bool:
    """Blocking: whether conmon records this container's output for a copier."""
    return any(os.path.lexists(os.path.join(directory, name)) for name in (CONMON_FILE, ROTATED_FILE))


def _parse_progress(data: bytes) -> tuple[int, int]:
    try:
        ino, offset = data.split()[:2]
        return int(ino), int(offset)
    except ValueError:
        return 0, 0


def ask_conmon_to_reopen(bundle: str) -> None:
    """Blocking: conmon's control FIFO; message 2 makes it reopen its log path (a new, empty file)."""
    fd = os.open(os.path.join(bundle, "ctl"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.write(fd, b"2 0 0\n")
    finally:
        os.close(fd)
