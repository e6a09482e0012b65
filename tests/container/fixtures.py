"""Container fixtures shared by the container, streaming and telemetry suites (helpers in ctrutil.py)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.container.ctrutil import BUSYBOX, GROUP, PASSWD, Env, OverlayProvider, Pod, make_pod


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("busybox") / "rootfs"
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/app"):
        (root / d).mkdir(parents=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


@pytest.fixture
async def env(tmp_path: Path, busybox_rootfs: Path) -> AsyncIterator[Env]:
    run_dir = tmp_path / "run"
    e = Env(tmp_path / "containers", run_dir, OverlayProvider(busybox_rootfs))
    try:
        yield e
    finally:
        if e.managers:
            mgr = e.managers[-1]
            for c in mgr.list_containers():
                with contextlib.suppress(Exception):
                    await mgr.remove(c.id)
        for mgr in e.managers:
            await mgr.close()


@pytest.fixture
async def pod(env: Env, tmp_path: Path) -> AsyncIterator[Pod]:
    async with make_pod(env, tmp_path) as p:
        yield p
