"""What each OCI runtime handler can do, asked once at start-up as containerd does: `<runtime> features`
(runtime-spec features.md) lists the mount options and namespaces it knows; a runtime without that
command claims nothing. kubelet and critest read the answer from Status; CreateContainer and
RunPodSandbox enforce it.

User namespaces also need the kernel: crishim idmaps the rootfs itself (container/userns.py), so the
claim is made only where a probe at start-up could idmap the filesystem containers live on.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import logging
from dataclasses import dataclass

from crishim.container.oci import OCIRuntimeError, RuntimeHandler
from crishim.container.userns import SYS_MOUNT_SETATTR

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class HandlerFeatures:
    recursive_read_only: bool = False
    user_namespaces: bool = False


def mount_setattr_available() -> bool:
    """Whether the kernel has mount_setattr(2) (5.12+), which runtimes apply `rro` with."""
    result = _libc.syscall(SYS_MOUNT_SETATTR, -1, b"", 0, None, 0)
    return result == 0 or ctypes.get_errno() != errno.ENOSYS


def features_from(output: str, kernel_rro: bool, kernel_userns: bool = False) -> HandlerFeatures:
    """Read `<runtime> features` JSON; malformed output claims nothing."""
    try:
        data = json.loads(output)
    except ValueError:
        return HandlerFeatures()
    if not isinstance(data, dict):
        return HandlerFeatures()
    options = data.get("mountOptions")
    known = options if isinstance(options, list) else []
    linux = data.get("linux")
    namespaces = linux.get("namespaces") if isinstance(linux, dict) else None
    return HandlerFeatures(
        recursive_read_only=kernel_rro and "rro" in known,
        user_namespaces=kernel_userns and isinstance(namespaces, list) and "user" in namespaces)


async def probe(handler: RuntimeHandler, kernel_userns: bool = False) -> HandlerFeatures:
    """The handler's features; the handler must be installed (its wrapper written). `kernel_userns`:
    the node can give containers idmapped root filesystems (see userns.idmap_unsupported)."""
    try:
        output = await handler.run("features")
    except (OCIRuntimeError, OSError) as exc:
        log.info("runtime handler has no features command: it claims no optional feature",
                 extra={"handler": handler.name, "error": str(exc)})
        return HandlerFeatures()
    return features_from(output, await asyncio.to_thread(mount_setattr_available), kernel_userns)
