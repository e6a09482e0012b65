"""crishim's own admin endpoint: a root-only unix socket beside the CRI socket, for what CRI has no call for.

Today one call: import an image archive into the running daemon (what `ctr images import` is to
containerd, and what `kind load docker-image` uses). See `protocol` for the wire format and why it is
not gRPC.
"""

from pathlib import Path

ADMIN_SOCKET = "admin.sock"


def admin_socket_path(run_dir: str | Path) -> Path:
    """The admin socket lives in the run dir (0711), so it needs no configuration of its own."""
    return Path(run_dir) / ADMIN_SOCKET
