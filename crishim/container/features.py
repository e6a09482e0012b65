"""What each OCI runtime handler can do, asked once at start-up as containerd does: `<runtime> features`
(runtime-spec features.md) lists the mount options it knows; a runtime without that command claims
nothing. kubelet and critest read the answer from Status; CreateContainer enforces it.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import logging
from dataclasses import dataclass

from crishim.container.oci import OCIRuntimeError, RuntimeHandler

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_MOUNT_SETATTR = 442  # generic syscall table, like openat2 in inroot.py


@dataclass(frozen=True)
class HandlerFeatures:
    recursive_read_only: bool = False
    user_namespaces: bool = False


def mount_setattr_available() -> bool:
    """Whether the kernel has mount_setattr(2) (5.12+), which runtimes apply `rro` with."""
    result = _libc.syscall(_SYS_MOUNT_SETATTR, -1, b"", 0, None, 0)
    return result == 0 or ctypes.get_errno() != errno.ENOSYS


def features_from(output: str, kernel_rro: bool) -> HandlerFeatures:
    """Read `<runtime> features` JSON; malformed output claims nothing."""
    try:
        data = json.loads(output)
    except ValueError:
        return HandlerFeatures()
    options = data.get("mountOptions") if isinstance(data, dict) else None
    known = options if isinstance(options, list) else []
    return HandlerFeatures(recursive_read_only=kernel_rro and "rro" in known)


async def probe(handler: RuntimeHandler) -> HandlerFeatures:
    """The handler's features; the handler must be installed (its wrapper written)."""
    try:
        output = await handler.run("features")
    except (OCIRuntimeError, OSError) as exc:
        log.info("runtime handler has no features command: it claims no optional feature",
                 extra={"handler": handler.name, "error": str(exc)})
        return HandlerFeatures()
    return features_from(output, await asyncio.to_thread(mount_setattr_available))
