"""The client side of both transports, written the way client-go behaves, for the tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from crishim.streaming import spdy
from crishim.streaming.websocket import OP_BINARY, WebSocket


@dataclass
class Result:
    stdout: bytes = b""
    stderr: bytes = b""
    error: bytes = b""

    @property
    def exit_code(self) -> int:
        """0 for Success, the ExitCode cause otherwise (what kubectl returns)."""
        if not self.error:
            return 0
        status = json.loads(self.error)
        if status["status"] == "Success":
            return 0
        assert status["reason"] == "NonZeroExitCode", status
        return int(status["details"]["causes"][0]["message"])


@dataclass
class HTTPAnswer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


async def http_request(url: str, headers: dict[str, list[str]], method: str = "GET"
                       ) -> tuple[HTTPAnswer, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send one request; the connection stays open only after a 101."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    lines = [f"{method} {parts.path} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{k}: {v}" for k, values in headers.items() for v in values]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    answer = HTTPAnswer(int(head[0].split(" ")[1]))
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            previous = answer.headers.get(key)
            answer.headers[key] = f"{previous}, {value.strip()}" if previous else value.strip()
    if answer.status != 101:
        answer.body = await reader.read()
        writer.close()
    return answer, reader, writer


async def spdy_connect(url: str, protocols: list[str]) -> tuple[HTTPAnswer, spdy.Session | None]:
    answer, reader, writer = await http_request(url, {
        "Connection": ["Upgrade"], "Upgrade": ["SPDY/3.1"], "X-Stream-Protocol-Version": protocols})
    if answer.status != 101:
        return answer, None
    session = spdy.Session(spdy.StreamTransport(reader, writer), server=False)
    session.start()
    return answer, session


async def ws_connect(url: str, protocols: list[str]) -> tuple[HTTPAnswer, WebSocket | None]:
    key = base64.b64encode(os.urandom(16)).decode()
    answer, reader, writer = await http_request(url, {
        "Connection": ["Upgrade"], "Upgrade": ["websocket"], "Sec-WebSocket-Key": [key],
        "Sec-WebSocket-Version": ["13"], "Sec-WebSocket-Protocol": [", ".join(protocols)]})
    if answer.status != 101:
        return answer, None
    return answer, WebSocket(reader, writer, client=True)


async def read_all(stream: spdy.Stream | None) -> bytes:
    out = b""
    while stream is not None and (chunk := await stream.read()):
        out += chunk
    return out


async def spdy_remotecommand(url: str, *, stdin: bytes | None = None, stdout: bool = True,
                             stderr: bool = False, tty: bool = False, size: tuple[int, int] | None = None,
                             protocol: str | list[str] = "v4.channel.k8s.io",
                             keep_stdin_open: bool = False) -> Result:
    """Run one exec/attach the way client-go's v4 protocol does: error stream first, then the rest.
    `protocol` may be the list client-go offers, in its order of preference."""
    answer, session = await spdy_connect(url, [protocol] if isinstance(protocol, str) else protocol)
    assert session is not None, answer
    try:
        error = await session.open_stream({"streamType": "error"})
        await error.close()
        streams: dict[str, spdy.Stream] = {}
        if stdin is not None:
            streams["stdin"] = await session.open_stream({"streamType": "stdin"})
        if stdout:
            streams["stdout"] = await session.open_stream({"streamType": "stdout"})
        if stderr and not tty:
            streams["stderr"] = await session.open_stream({"streamType": "stderr"})
        if tty:
            streams["resize"] = await session.open_stream({"streamType": "resize"})
            if size is not None:
                await streams["resize"].write(json.dumps({"Width": size[0], "Height": size[1]}).encode())
        if stdin is not None:
            if stdin:
                await streams["stdin"].write(stdin)
            if not keep_stdin_open:
                await streams["stdin"].close()
        out, err, status = await asyncio.gather(read_all(streams.get("stdout")),
                                                read_all(streams.get("stderr")), read_all(error))
        return Result(out, err, status)
    finally:
        await session.close()


async def ws_remotecommand(url: str, *, stdin: bytes | None = None, protocol: str = "v5.channel.k8s.io",
                           size: tuple[int, int] | None = None) -> Result:
    answer, ws = await ws_connect(url, [protocol])
    assert ws is not None, answer
    assert answer.headers["sec-websocket-protocol"] == protocol
    result = Result()
    try:
        if size is not None:
            await ws.send(b"\x04" + json.dumps({"Width": size[0], "Height": size[1]}).encode())
        if stdin is not None:
            if stdin:
                await ws.send(b"\x00" + stdin)
            if protocol.startswith("v5."):
                await ws.send(b"\xff\x00")
        while (msg := await ws.receive()) is not None:
            opcode, data = msg
            assert opcode == OP_BINARY
            channel, payload = data[0], data[1:]
            if channel == 1:
                result.stdout += payload
            elif channel == 2:
                result.stderr += payload
            elif channel == 3:
                result.error += payload
        return result
    finally:
        ws.abort()


async def spdy_port_forward(session: spdy.Session, port: int, request_id: int, payload: bytes
                            ) -> tuple[bytes, bytes]:
    """One forwarded connection as client-go makes it: error stream, data stream, send, read to EOF."""
    headers = {"port": str(port), "requestID": str(request_id)}
    error = await session.open_stream({"streamType": "error", **headers})
    await error.close()
    data = await session.open_stream({"streamType": "data", **headers})
    if payload:
        await data.write(payload)
    received, error_text = await asyncio.gather(read_all(data), read_all(error))
    with contextlib.suppress(EOFError):
        await data.close()
    return received, error_text
