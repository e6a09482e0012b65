"""The HTTP side of the streaming endpoints: request parsing, upgrade answers, subprotocol choice, and
the Kubernetes `Status` documents the error channel carries."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

MAX_HEAD = 64 * 1024

# Client-go's names; ours are tried in the client's order of preference.
V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V2 = "v2.channel.k8s.io"
V1 = "channel.k8s.io"
V5_B64 = "v5.base64.channel.k8s.io"
V4_B64 = "v4.base64.channel.k8s.io"
V1_B64 = "base64.channel.k8s.io"
PORT_FORWARD = "portforward.k8s.io"
WS_PORT_FORWARD = "SPDY/3.1+portforward.k8s.io"

SPDY_REMOTECOMMAND = (V5, V4, V3, V2, V1)
WS_REMOTECOMMAND = (V5, V4, V1, V5_B64, V4_B64, V1_B64)

PROTOCOL_HEADER = "x-stream-protocol-version"


class BadRequest(Exception):
    """Answered with an HTTP error status; the message is the body."""

    def __init__(self, status: int, message: str, headers: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, list[str]] = field(default_factory=dict)

    def header(self, name: str) -> str:
        return ", ".join(self.headers.get(name.lower(), []))

    def tokens(self, name: str) -> list[str]:
        """Comma-separated values of every line of a header, e.g. offered subprotocols."""
        return [t.strip() for line in self.headers.get(name.lower(), []) for t in line.split(",")
                if t.strip()]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


async def read_request(reader: asyncio.StreamReader) -> Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise BadRequest(431, "request head too large") from None
    except asyncio.IncompleteReadError:
        raise EOFError from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, f"malformed request line {lines[0]!r}")
    req = Request(parts[0], parts[1])
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(400, f"malformed header line {line!r}")
        req.headers.setdefault(name.strip().lower(), []).append(value.strip())
    return req


def response(status: int, reason: str, headers: dict[str, list[str]] | None = None,
             body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    for name, values in (headers or {}).items():
        lines += [f"{name}: {v}" for v in values]
    if status != 101:
        lines += [f"Content-Length: {len(body)}", "Content-Type: text/plain; charset=utf-8",
                  "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           426: "Upgrade Required", 431: "Request Header Fields Too Large", 500: "Internal Server Error"}


def error_response(exc: BadRequest) -> bytes:
    return response(exc.status, REASONS.get(exc.status, "Error"), exc.headers,
                    (str(exc) + "\n").encode())


def negotiate(offered: list[str], supported: tuple[str, ...], header: str) -> str:
    """The first protocol the client offers that we speak (kubelet's rule: the client's preference)."""
    for proto in offered:
        if proto in supported:
            return proto
    raise BadRequest(403, f"none of the offered protocols {offered} is supported; use one of "
                          f"{list(supported)}", {header: list(supported)})


def success_status() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def exit_code_status(code: int, command: str) -> dict[str, Any]:
    """What client-go turns into an exit code (`CodeExitError`)."""
    return {
        "metadata": {}, "status": "Failure",
        "message": f"command terminated with non-zero exit code: {command} exited with {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def failure_status(message: str) -> dict[str, Any]:
    return {"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError",
            "code": 500}


def encode_status(status: dict[str, Any]) -> bytes:
    return json.dumps(status, separators=(",", ":")).encode()
