"""Real containers (conmon + runc over a busybox rootfs) behind a real streaming server.

The pod and container machinery is the container suite's (tests/container/); the run dir
is kept short because conmon's attach sockets live under it (sun_path is 108 bytes).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from crishim.config import StreamingSection
from crishim.container.manager import ContainerManager
from crishim.container.model import Container, ContainerSpec
from crishim.sandbox.model import Sandbox
from crishim.streaming.server import StreamingServer
from tests.container.ctrutil import IMAGE, Env, OverlayProvider, Pod, make_pod, spec


class Sandboxes:
    def __init__(self) -> None:
        self.items: dict[str, Sandbox] = {}

    def get(self, sandbox_id: str) -> Sandbox | None:
        return self.items.get(sandbox_id)


@dataclass
class Stack:
    env: Env
    manager: ContainerManager
    pod: Pod
    sandboxes: Sandboxes
    server: StreamingServer

    async def run(self, name: str, script: str, **kwargs: object) -> Container:
        c = await self.manager.create(self.pod.sandbox, spec(name, script, **kwargs), IMAGE)
        await self.manager.start(c.id)
        return c

    async def run_spec(self, container_spec: ContainerSpec) -> Container:
        c = await self.manager.create(self.pod.sandbox, container_spec, IMAGE)
        await self.manager.start(c.id)
        return c


@pytest.fixture(params=["runc"])
async def stack(request: pytest.FixtureRequest, tmp_path: Path, busybox_rootfs: Path
                ) -> AsyncIterator[Stack]:
    """A pod of the runtime handler named by the parameter (tests override it to also cover crun)."""
    run_dir = Path(tempfile.mkdtemp(prefix="cs", dir="/run"))
    env = Env(tmp_path / "containers", run_dir, OverlayProvider(busybox_rootfs))
    manager = env.manager()
    sandboxes = Sandboxes()
    try:
        async with make_pod(env, tmp_path, handler=request.param) as pod:
            sandboxes.items[pod.sandbox.id] = pod.sandbox
            server = StreamingServer(StreamingSection(), manager, sandboxes)
            await server.start()
            try:
                yield Stack(env, manager, pod, sandboxes, server)
            finally:
                await server.close()
    finally:
        await manager.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def pids_running(marker: bytes) -> list[int]:
    """Processes whose command line is exactly `marker` (NUL-separated arguments); zombies have none."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/cmdline").read_bytes() == marker:
                    pids.append(int(entry))
    return pids


def displayed(tty_output: bytes) -> str:
    """Terminal output as a terminal shows it. runc (`exec -t` in the foreground) clears ONLCR on the
    container's terminal only once it has received it, while the process may already be writing: a line
    written before then is translated twice and arrives as `\\r\\r\\n`, which displays as `\\r\\n`."""
    return re.sub(rb"\r+\n", b"\r\n", tty_output).decode()
