"""Helpers for the container tests: pods, images and a rootfs provider without the sandbox and image
managers.

A pod is a `Sandbox` record pointing at namespaces made here (`ip netns add`, `unshare --ipc --uts`
pinned on files); images are a busybox-static root filesystem under an overlay per container.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crishim.container.manager import ContainerManager
from crishim.container.model import ContainerSpec, SecurityContext
from crishim.container.oci import make_runtimes
from crishim.errors import NotFound
from crishim.sandbox.model import Sandbox, SandboxSpec, SandboxState
from tests.harness import run

BUSYBOX = "/bin/busybox"
CGROUP_ROOT = Path("/sys/fs/cgroup")
PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n" \
         "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n"


@dataclass
class Image:
    id: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class OverlayRootfs:
    lower: Path
    container_dir: Path

    @property
    def merged(self) -> Path:
        return self.container_dir / "rootfs"

    async def mount(self) -> None:
        upper, work = self.container_dir / "upper", self.container_dir / "work"
        await _run("mount", "-t", "overlay", "overlay", "-o",
                   f"lowerdir={self.lower},upperdir={upper},workdir={work}", str(self.merged))


class OverlayProvider:
    """A container rootfs as the image manager makes it: an overlay over a read-only lower dir,
    prepared here, mounted by the container manager, unmounted on release."""

    def __init__(self, lower: Path) -> None:
        self.lower = lower
        self.mounted: dict[str, Path] = {}

    async def prepare_rootfs(self, image_id: str, container_id: str,
                             container_dir: Path) -> OverlayRootfs:
        for d in ("rootfs", "upper", "work"):
            (container_dir / d).mkdir()
        rootfs = OverlayRootfs(self.lower, container_dir)
        self.mounted[container_id] = rootfs.merged
        return rootfs

    async def release_rootfs(self, container_id: str) -> None:
        merged = self.mounted.pop(container_id, None)
        if merged is not None and await asyncio.to_thread(os.path.ismount, merged):
            await _run("umount", str(merged))

    async def prepare_image_volume(self, ref: str, container_id: str, index: int,
                                   directory: Path) -> tuple[OverlayRootfs, str]:
        raise NotFound(f"image {ref!r}: this stand-in has no image volumes (the server tests do)")

    async def release_image_volumes(self, container_id: str) -> None:
        """Nothing to release: no image volume is ever made here."""


async def _run(*cmd: str) -> None:
    proc = await asyncio.create_subprocess_exec(*cmd, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{cmd}: {err.decode()}")


@dataclass
class Pod:
    sandbox: Sandbox
    netns: str

    def sh(self, *cmd: str) -> str:
        return run(["ip", "netns", "exec", self.netns, *cmd]).stdout


@contextlib.asynccontextmanager
async def make_pod(env: Env, base: Path, handler: str = "") -> AsyncIterator[Pod]:
    """A pod; on exit its containers are removed before its namespaces and cgroup parent go."""
    token = secrets.token_hex(4)
    netns = f"crishim-ct-{token}"
    pod_dir = base / f"pod-{token}"
    (pod_dir / "shm").mkdir(parents=True)
    (pod_dir / "shm").chmod(0o1777)  # as a pod's /dev/shm tmpfs (mode=1777)
    (pod_dir / "hostname").write_text("testpod\n")
    (pod_dir / "hosts").write_text("127.0.0.1 localhost\n")
    (pod_dir / "resolv.conf").write_text("nameserver 192.0.2.53\nsearch example.test\n")
    ipc, uts = pod_dir / "ipc", pod_dir / "uts"
    ipc.touch()
    uts.touch()
    cgroup_parent = f"/crishim-test-{token}"
    spec = SandboxSpec(name="testpod", namespace="default", uid=token, hostname="testpod",
                       log_directory=str(pod_dir / "logs"), runtime_handler=handler,
                       cgroup_parent=cgroup_parent)
    sandbox = Sandbox(id=secrets.token_hex(32), spec=spec, state=SandboxState.READY,
                      created_at=0, dir=str(pod_dir), hostname="testpod", netns_path=f"/run/netns/{netns}",
                      ipc_ns_path=str(ipc), uts_ns_path=str(uts))
    run(["ip", "netns", "add", netns])
    try:
        run(["unshare", f"--ipc={ipc}", f"--uts={uts}", "hostname", "testpod"])
        run(["ip", "-n", netns, "link", "set", "lo", "up"])
        run(["ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"])
        run(["ip", "-n", netns, "addr", "add", "10.77.0.5/24", "dev", "eth0"])
        run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        run(["ip", "-n", netns, "link", "set", "peer0", "up"])
        yield Pod(sandbox, netns)
    finally:
        if env.managers:
            with contextlib.suppress(Exception):
                await env.managers[-1].remove_all(sandbox.id)
        for pid in run(["ip", "netns", "pids", netns], check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        run(["umount", str(ipc)], check=False)
        run(["umount", str(uts)], check=False)
        run(["ip", "netns", "del", netns], check=False)
        remove_cgroup_parent(cgroup_parent)


def remove_cgroup_parent(parent: str) -> None:
    """runc removes a container's leaf cgroup, never the pod's parent: that is the pod owner's."""
    for hierarchy in CGROUP_ROOT.iterdir():
        with contextlib.suppress(OSError):
            (hierarchy / parent.lstrip("/")).rmdir()


@dataclass
class Env:
    state: Path
    run_dir: Path
    provider: OverlayProvider
    managers: list[ContainerManager] = field(default_factory=list)

    def manager(self) -> ContainerManager:
        runtimes = make_runtimes(self.run_dir, "/usr/bin/runc", "/usr/bin/crun")
        mgr = ContainerManager(self.state, self.run_dir, runtimes, "/usr/bin/conmon",
                               self.provider)
        self.managers.append(mgr)
        return mgr


def spec(name: str, script: str, **kwargs: Any) -> ContainerSpec:
    security = kwargs.pop("security", SecurityContext())
    return ContainerSpec(name=name, command=["/bin/sh", "-c", script], log_path=f"{name}/0.log",
                         security=security, **kwargs)


IMAGE = Image("sha256:" + "ab" * 32, {"Env": ["PATH=/bin"], "Cmd": ["sh"]})


def cgroup_dirs(parent: str, container_id: str) -> list[Path]:
    return [p for p in CGROUP_ROOT.glob(f"*/{parent.lstrip('/')}/{container_id}") if p.exists()]


def mounts_under(path: Path) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if line.split()[4].startswith(str(path))]



async def wait_until(check: Callable[[], Any], within: float = 10.0,
                     what: str = "condition") -> Any:
    """Poll a check (plain or async) with a deadline: no sleeps as synchronisation."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)
