"""The admin socket's wire format, shared by the daemon and `crishim images import`.

Not gRPC: the daemon must know who is calling, and only a socket of our own gives SO_PEERCRED (grpc
offers no peer uid on unix sockets). The format is small enough to need no schema:

    client: one JSON request line, {"call": "import"}
    client: the archive as frames, each a 4-byte big-endian length then that many bytes; length 0 ends it
    daemon: JSON lines: progress events {"event": ...}, then one answer, {"images": [...]} or
            {"error": message, "code": name}; then it closes the connection

The client keeps the connection open until the answer: closing it earlier (being killed) cancels the
import, which then leaves nothing behind.
"""

from __future__ import annotations

import json
import struct
from typing import Any

FRAME_HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 20
CALL_IMPORT = "import"


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"
