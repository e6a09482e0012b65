"""Pinned pod namespaces: create network, IPC and UTS namespaces and keep them alive with bind mounts.

Namespace membership is per thread on Linux, so every operation that enters or creates a namespace runs on
a fresh, short-lived thread that ends with the operation: no event-loop or gRPC thread ever changes its
namespaces, and a thread left inside a pod's namespaces cannot be reused by accident.

A pod with its own user namespace (userns_options mode POD) is the exception: no thread of a
multi-threaded process may create or enter a user namespace, so a short-lived child process makes it
together with the pod's other namespaces (which it then owns), and writes what only its root may write.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import re
import socket
import struct
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from crishim.errors import InvalidArgument
from crishim.limits import shown
from crishim.threads import run_in_thread

CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
MS_BIND = 0x1000
MNT_DETACH = 0x2
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
NS_GET_NSTYPE = 0xB703
TMPFS_MAGIC = 0x01021994
STATFS_SIZE = 120  # struct statfs on 64-bit Linux; f_type is its first field
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")  # mountinfo writes a space in a path as \040

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]

T = TypeVar("T")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                       data.encode() if data else None), f"mount {source} on {target}")


def unmount(target: str) -> None:
    """Detach `target`; a path that is gone or not mounted counts as done."""
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.ENOENT, errno.EINVAL):
            raise OSError(err, f"umount {target}: {os.strerror(err)}")


def on_tmpfs(path: str) -> bool:
    buf = ctypes.create_string_buffer(STATFS_SIZE)
    _check(_libc.statfs(path.encode(), buf), f"statfs {path}")
    return bool(struct.unpack_from("l", buf)[0] == TMPFS_MAGIC)


def mounts_below(path: str) -> list[str]:
    """Mount points strictly below `path`, deepest first (so each can be detached in turn)."""
    prefix = path.rstrip("/") + "/"
    targets = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if target.startswith(prefix):
            targets.append(target)
    return sorted(targets, key=len, reverse=True)


def _bring_up_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


def _write_sysctls(sysctls: Mapping[str, str]) -> None:
    """The kernel refusing a value (EINVAL, ERANGE) or a name (ENOENT) is the request's fault."""
    for key, value in sysctls.items():
        path = Path("/proc/sys") / key.replace(".", "/")
        try:
            path.write_text(value)
        except OSError as exc:
            raise InvalidArgument(f"config.linux.sysctls[{shown(key)}]: the kernel refused "
                                  f"{shown(value)}: {exc.strerror}") from exc


@dataclass(frozen=True)
class PodNamespaces:
    """Paths of the pinned namespaces of one pod ("" where the pod shares the host's)."""

    net: str = ""
    ipc: str = ""
    uts: str = ""
    # The pod's own user namespace, which then owns the others, and its uid_map / gid_map lines.
    user: str = ""
    uid_map: str = ""
    gid_map: str = ""

    def pinned(self) -> list[tuple[int, str, str]]:
        """(clone flag, /proc name, path) of every namespace this pod owns but its user namespace
        (a thread of a multi-threaded process can never enter one)."""
        entries = [(CLONE_NEWNET, "net", self.net), (CLONE_NEWIPC, "ipc", self.ipc),
                   (CLONE_NEWUTS, "uts", self.uts)]
        return [entry for entry in entries if entry[2]]


def pin(namespaces: PodNamespaces, hostname: str) -> None:
    """Blocking form of `pin_namespaces`: only for a thread from `run_in_thread`, which it leaves inside
    the new namespaces."""
    made: list[str] = []
    try:
        for path in _paths(namespaces):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))
            made.append(path)
        if namespaces.user:
            _pin_under_user_namespace(namespaces)
            enter_namespaces(namespaces)
        else:
            flags = 0
            for flag, _, _ in namespaces.pinned():
                flags |= flag
            _check(_libc.unshare(flags), "unshare")
        if namespaces.uts and hostname:
            name = hostname.encode()
            _check(_libc.sethostname(name, len(name)), "sethostname")
        if namespaces.net:
            _bring_up_loopback()
        if not namespaces.user:
            for _, proc_name, path in namespaces.pinned():
                mount(f"/proc/thread-self/ns/{proc_name}", path, None, MS_BIND)
    except BaseException:
        _release(made)
        raise


def each(steps: Iterable[Callable[[], None]]) -> None:
    """Run every step whatever happened to the others (teardown must get as far as it can); the first
    failure is raised at the end."""
    failures: list[OSError] = []
    for step in steps:
        try:
            step()
        except OSError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


_UNSHARE_OPTION = {CLONE_NEWNET: "--net", CLONE_NEWIPC: "--ipc", CLONE_NEWUTS: "--uts"}


def _pin_under_user_namespace(namespaces: PodNamespaces) -> None:
    """A new user namespace and, owned by it, the pod's other namespaces, pinned from here. The owner
    matters: only a namespace owned by the container's user namespace lets its root mount sysfs or
    mqueue, bind low ports, set the host name or write net.* sysctls."""
    options = [_UNSHARE_OPTION[flag] for flag, _, _ in namespaces.pinned()]
    with user_namespace_child(options, namespaces.uid_map, namespaces.gid_map) as pid:
        for proc_name, path in [("user", namespaces.user),
                                *((name, path) for _, name, path in namespaces.pinned())]:
            mount(f"/proc/{pid}/ns/{proc_name}", path, None, MS_BIND)


@contextlib.contextmanager
def user_namespace_child(unshare_options: list[str], uid_map: str, gid_map: str) -> Iterator[int]:
    """The pid of a child in a new, mapped user namespace (and the namespaces `unshare_options` name,
    owned by it), alive until the block ends. A child makes them because the kernel refuses
    CLONE_NEWUSER to a multi-threaded process; we map it from here, privileged in its parent."""
    argv = ["unshare", "--user", *unshare_options, "--", "sh", "-c", "echo; read _"]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    try:
        if child.stdout.readline() != b"\n":
            child.wait()
            raise OSError(errno.EPERM, f"unshare --user: {child.stderr.read().decode().strip()}")
        write_id_maps(child.pid, uid_map, gid_map)
        yield child.pid
    finally:
        child.stdin.close()
        child.wait()
        child.stdout.close()
        child.stderr.close()


def write_id_maps(pid: int, uid_map: str, gid_map: str) -> None:
    """Map the user namespace `pid` is in; we are privileged in its parent, so no setgroups dance."""
    for name, lines in (("uid_map", uid_map), ("gid_map", gid_map)):
        try:
            Path(f"/proc/{pid}/{name}").write_text(lines)
        except OSError as exc:
            raise OSError(exc.errno, f"writing {name} {lines.strip()!r}: {exc.strerror}") from exc


def _paths(namespaces: PodNamespaces) -> list[str]:
    """Every pin file of the pod, its user namespace's included."""
    return [path for _, _, path in namespaces.pinned()] + ([namespaces.user] if namespaces.user else [])


def _release(paths: list[str]) -> None:
    each(functools.partial(_release_one, path) for path in paths)


def _release_one(path: str) -> None:
    unmount(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def pin_namespaces(namespaces: PodNamespaces, hostname: str) -> None:
    """Create the pod's namespaces (hostname set, `lo` up) and bind-mount them at their paths."""
    await run_in_thread(lambda: pin(namespaces, hostname))


def release(namespaces: PodNamespaces) -> None:
    """Blocking form of `release_namespaces`."""
    _release(_paths(namespaces))


async def release_namespaces(namespaces: PodNamespaces) -> None:
    """Unmount and delete the pinned namespaces; idempotent."""
    await asyncio.to_thread(release, namespaces)


def enter_namespaces(namespaces: PodNamespaces) -> None:
    """Move the calling thread into the pod's namespaces; only for threads from `run_in_thread`."""
    for flag, _, path in namespaces.pinned():
        fd = os.open(path, os.O_RDONLY)
        try:
            _check(_libc.setns(fd, flag), f"setns {path}")
        finally:
            os.close(fd)


def _enter_and_write(namespaces: PodNamespaces, sysctls: Mapping[str, str]) -> None:
    enter_namespaces(namespaces)
    _write_sysctls(sysctls)


async def apply_sysctls(namespaces: PodNamespaces, sysctls: Mapping[str, str]) -> None:
    """Write namespaced sysctls from inside the pod's namespaces."""
    if not sysctls:
        return
    if namespaces.user:
        await asyncio.to_thread(_write_sysctls_as_pod_root, namespaces, sysctls)
    else:
        await run_in_thread(lambda: _enter_and_write(namespaces, sysctls))


# Writes "$1" <- "$2", "$3" <- "$4", ...; the first failure ends it with the shell's message.
_WRITE_PAIRS = 'while [ $# -gt 0 ]; do printf %s "$2" > "$1" || exit 1; shift 2; done'


def _write_sysctls_as_pod_root(namespaces: PodNamespaces, sysctls: Mapping[str, str]) -> None:
    """Under a pod's own user namespace the kernel.* (IPC, UTS) sysctl files are writable only by that
    namespace's root, with no capability override as net.* has: a child enters the user namespace
    (nsenter makes it uid 0 there) and the pod's others, and writes them."""
    argv = ["nsenter", f"--user={namespaces.user}",
            *(f"--{name}={path}" for _, name, path in namespaces.pinned()),
            "--", "sh", "-c", _WRITE_PAIRS, "sh"]
    for key, value in sysctls.items():
        argv += [str(Path("/proc/sys") / key.replace(".", "/")), value]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        raise OSError(errno.EPERM, f"sysctls {dict(sysctls)}: {done.stderr.strip()}")


def is_pinned(path: str) -> bool:
    """True when `path` is a bind-mounted namespace (nsfs), not just the empty mount-point file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        # Only an nsfs file answers NS_GET_NSTYPE.
        fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True
