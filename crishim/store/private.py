"""Who may read crishim's state: root, and nobody else.

Layers keep what images say, setuid-root binaries and device nodes included, and records hold pod
configs with their annotations. A local user who can walk into the image store can run a setuid binary
of any pulled image as root (containerd CVE-2021-41103, moby CVE-2021-41091). So the state dir is 0700,
and the run dir 0711: traversable, for the clients of a socket kept there (the socket itself is 0660,
root's group), but not listable, with every entry in it 0700 (directories) or 0600 (files). Containers
do not need more: runc sets up their root filesystems as root, and after pivot_root the host path above
a rootfs is not seen. Existing installs are tightened at every start; new files are made 0600 where they
are written (`write_bytes_atomic`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
RUN_DIR = 0o711


def private_dir(path: Path, mode: int = PRIVATE_DIR) -> None:
    """Create `path` with `mode`, or set `mode` on what an older crishim (or a umask) made wider."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    os.chmod(path, mode)


def restrict(state_dir: Path, run_dir: Path) -> None:
    """Both roots with their modes, and every entry directly in them private. Called before anything is
    created in them (so nothing new is ever exposed) and again once the managers made their dirs
    (a tmpfs mounted on one of them brings its own mode)."""
    private_dir(state_dir)
    private_dir(run_dir, RUN_DIR)
    for root in (state_dir, run_dir):
        for entry in os.scandir(root):
            kind = stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode)
            if kind == stat.S_IFDIR:
                os.chmod(entry.path, PRIVATE_DIR)
            elif kind == stat.S_IFREG:
                os.chmod(entry.path, PRIVATE_FILE)
