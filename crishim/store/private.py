"""Who may read crishim's state: root, and nobody else.

Layers keep what images say, setuid-root binaries and device nodes included, and records hold pod
configs with their annotations. A local user who can walk into the image store can run a setuid binary
of any pulled image as root (containerd CVE-2021-41103, moby CVE-2021-41091). So the state dir is 0700,
and the run dir 0711: traversable, for the clients of a socket kept there (the socket itself is 0660,
root's group), but not listable, with each directory crishim makes in it 0700. Containers need no more:
runc sets up their root filesystems as root, and after pivot_root the host path above a rootfs is not
seen. The modes are set at every start, which tightens an older install; files are made 0600 where they
are written (`write_bytes_atomic`).
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR = 0o700
RUN_DIR = 0o711


def private_dir(path: Path, mode: int = PRIVATE_DIR) -> None:
    """Create `path` with `mode`, or set `mode` on what an older crishim (or a umask) made wider."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    os.chmod(path, mode)
