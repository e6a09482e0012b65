"""The OCI runtimes (runc, crun) as crishim and conmon call them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crishim.errors import CrishimError

log = logging.getLogger(__name__)

UNIFIED_CONTROLLERS = Path("/sys/fs/cgroup/unified/cgroup.controllers")
CRUN_WRAPPER = """#!/bin/sh
# crun refuses hybrid cgroup hierarchies; hide the cgroup2 mount from it in a private mount namespace.
exec {unshare} --mount --propagation private /bin/sh -c \\
    'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$0" "$@"' {crun} "$@"
"""


class OCIRuntimeError(CrishimError):
    """The OCI runtime refused or failed; the message carries its stderr."""


@dataclass(frozen=True)
class RuntimeHandler:
    """One runtime handler: the binary (or wrapper) crishim and conmon run, and its state root."""

    name: str
    binary: str
    root: str
    timeout: float = 60.0
    # Script to install at `binary` before first use ("" when `binary` is the runtime itself).
    wrapper: str = ""

    def install(self) -> None:
        """Blocking: create the state root and write the wrapper script, if any."""
        Path(self.root).mkdir(parents=True, exist_ok=True)
        if self.wrapper:
            path = Path(self.binary)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(self.wrapper)
            tmp.chmod(0o755)
            os.replace(tmp, path)

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", self.root, *args]

    async def run(self, *args: str, stdin: bytes | None = None) -> str:
        proc = await asyncio.create_subprocess_exec(
            *self.argv(*args), stdin=asyncio.subprocess.PIPE if stdin is not None else
            asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise OCIRuntimeError(f"{self.name} {args[0]}: no answer after {self.timeout}s") from None
        if proc.returncode != 0:
            raise OCIRuntimeError(f"{self.name} {' '.join(args)}: {_message(err or out)}")
        return out.decode(errors="replace")

    async def start(self, container_id: str) -> None:
        await self.run("start", container_id)

    async def kill(self, container_id: str, signal: str) -> None:
        await self.run("kill", container_id, signal.removeprefix("SIG"))

    async def delete(self, container_id: str) -> None:
        """Idempotent: a container the runtime no longer knows is already deleted."""
        try:
            await self.run("delete", "--force", container_id)
        except OCIRuntimeError as exc:
            if not _is_missing(str(exc)):
                raise

    async def state(self, container_id: str) -> dict[str, Any] | None:
        try:
            out = await self.run("state", container_id)
        except OCIRuntimeError as exc:
            if _is_missing(str(exc)):
                return None
            raise
        state: dict[str, Any] = json.loads(out)
        return state

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        await self.run("update", "--resources", "-", container_id,
                       stdin=json.dumps(resources).encode())


def _message(raw: bytes) -> str:
    """runc logs JSON-ish lines (`level=error msg="…"`); keep the last non-empty one."""
    lines = [line.strip() for line in raw.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "failed without a message"


def _is_missing(message: str) -> bool:
    return "does not exist" in message or "not found" in message.lower()


def hybrid_cgroups() -> bool:
    try:
        return bool(UNIFIED_CONTROLLERS.read_text().split())
    except OSError:
        return False


def hugetlb_available() -> bool:
    """Blocking: whether the cgroup hierarchy the runtimes use has the hugetlb controller (on hybrid
    hosts it may sit in the unified hierarchy only, where runc and crun cannot use it)."""
    unified = Path("/sys/fs/cgroup/cgroup.controllers")
    if unified.exists():
        return "hugetlb" in unified.read_text().split()
    return Path("/sys/fs/cgroup/hugetlb").is_dir()


def make_runtimes(run_dir: Path, runc_path: str, crun_path: str) -> dict[str, RuntimeHandler]:
    """The handlers by name; on hybrid cgroup hosts crun runs through a wrapper (installed by the
    container manager at start-up)."""
    handlers = {"runc": RuntimeHandler("runc", runc_path, str(run_dir / "runc"))}
    if hybrid_cgroups():
        wrapper = CRUN_WRAPPER.format(unshare=shutil.which("unshare") or "/usr/bin/unshare",
                                      crun=crun_path)
        handlers["crun"] = RuntimeHandler("crun", str(run_dir / "crun-wrapper"),
                                          str(run_dir / "crun"), wrapper=wrapper)
    else:
        handlers["crun"] = RuntimeHandler("crun", crun_path, str(run_dir / "crun"))
    return handlers
