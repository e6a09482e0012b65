"""SPDY/3.1, WebSocket and HTTP pieces on their own (no root, no containers)."""

from __future__ import annotations

import asyncio
import json
import zlib

import pytest

from crishim.streaming import protocol, spdy
from crishim.streaming.channels import Options, Size, _JSONStream
from crishim.streaming.server import ExecRequest, TokenCache, _url_host
from crishim.streaming.websocket import (
    OP_BINARY,
    OP_TEXT,
    WebSocket,
    WebSocketTransport,
    accept_key,
    apply_mask,
    encode_frame,
)

# zlib stream (deflate with the SPDY/3 dictionary, sync flush) made by Node's zlib binding for the block
# {streamtype: error, port: 8080, requestid: 0}: a known-good block from another implementation.
NODE_BLOCK = bytes.fromhex(
    "78bbe3c6a7c203253a703a2b294a4dcc851625aca9a0808614cb45e01c60616061c0c0c0c0590489c64c50f2663400008feb0d38")


def test_dictionary_matches_the_spec() -> None:
    # The published dictionary is 1423 bytes with Adler-32 0xe3c6a7c2 (the DICTID every peer checks).
    assert len(spdy.DICTIONARY) == 1423
    assert zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2


def test_decompresses_a_block_from_another_implementation() -> None:
    headers = spdy.HeaderDecompressor().decompress(NODE_BLOCK)
    assert headers == {"streamtype": "error", "port": "8080", "requestid": "0"}


def test_compressed_blocks_share_one_zlib_stream() -> None:
    comp, decomp = spdy.HeaderCompressor(), spdy.HeaderDecompressor()
    first = comp.compress({"streamType": "stdout"})
    second = comp.compress({"streamType": "stdout"})
    assert first[:2] == b"\x78\xbb" and first[2:6] == (0xE3C6A7C2).to_bytes(4, "big")
    assert len(second) < len(first)  # the second refers back into the first
    assert decomp.decompress(first) == {"streamtype": "stdout"}
    assert decomp.decompress(second) == {"streamtype": "stdout"}
    plain = zlib.decompressobj(zdict=spdy.DICTIONARY)
    assert spdy.decode_headers(plain.decompress(first)) == {"streamtype": "stdout"}


def test_multi_valued_and_malformed_header_blocks() -> None:
    raw = spdy.encode_headers({"a": "1\x002"})
    assert spdy.decode_headers(raw) == {"a": "1\x002"}
    with pytest.raises(spdy.ProtocolError):
        spdy.decode_headers(raw[:-1])
    with pytest.raises(spdy.ProtocolError):
        spdy.HeaderDecompressor().decompress(b"not zlib at all")


def test_control_frames_round_trip() -> None:
    comp, decomp = spdy.HeaderCompressor(), spdy.HeaderDecompressor()

    def parse(frame: bytes) -> spdy.Frame:
        return spdy.parse_frame(frame[:8], frame[8:], decomp)

    syn = parse(spdy.syn_stream_frame(comp, 5, {"streamType": "stdin"}, fin=True, priority=3))
    assert (syn.kind, syn.stream_id, syn.flags, syn.priority) == (spdy.SYN_STREAM, 5, spdy.FLAG_FIN, 3)
    assert syn.headers == {"streamtype": "stdin"}
    reply = parse(spdy.syn_reply_frame(comp, 5, {}))
    assert (reply.kind, reply.stream_id, reply.headers) == (spdy.SYN_REPLY, 5, {})
    rst = parse(spdy.rst_stream_frame(7, spdy.CANCEL))
    assert (rst.kind, rst.stream_id, rst.status) == (spdy.RST_STREAM, 7, spdy.CANCEL)
    assert parse(spdy.ping_frame(9)).status == 9
    goaway = parse(spdy.goaway_frame(11, 0))
    assert (goaway.kind, goaway.stream_id) == (spdy.GOAWAY, 11)
    # SETTINGS (one entry: flags 0, id 7 = initial window, value 65536) as spdystream-era peers send it.
    settings = parse(bytes.fromhex("80030004" "0000000c" "00000001" "00000007" "00010000"))
    assert settings.settings == [(0, 7, 65536)]
    data = parse(spdy.data_frame(3, b"hello", fin=True))
    assert (data.kind, data.stream_id, data.data, data.flags) == (0, 3, b"hello", spdy.FLAG_FIN)
    # Exact bytes of a DATA frame and a PING (spec §2.2): a regression guard on the layout.
    assert spdy.data_frame(3, b"hi", fin=True) == bytes.fromhex("00000003" "01000002") + b"hi"
    assert spdy.ping_frame(1) == bytes.fromhex("80030006" "00000004" "00000001")
    with pytest.raises(spdy.ProtocolError, match="version 2"):
        spdy.parse_frame(bytes.fromhex("80020006 00000004"), b"\0\0\0\1", decomp)


async def _pipe_sessions(on_stream: spdy.StreamHandler) -> tuple[spdy.Session, spdy.Session, asyncio.Server]:
    ready: asyncio.Future[spdy.Session] = asyncio.get_running_loop().create_future()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = spdy.Session(spdy.StreamTransport(reader, writer), server=True, on_stream=on_stream)
        ready.set_result(session)
        await session.serve()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    client = spdy.Session(spdy.StreamTransport(reader, writer), server=False)
    client.start()
    return client, await ready, server


async def test_session_streams_echo_and_half_close() -> None:
    tasks: list[asyncio.Task[None]] = []

    async def echo(stream: spdy.Stream) -> None:
        async def run() -> None:
            while chunk := await stream.read():
                await stream.write(chunk.upper())
            await stream.close()
        tasks.append(asyncio.ensure_future(run()))

    client, server_session, server = await _pipe_sessions(echo)
    try:
        streams = [await client.open_stream({"n": str(i)}) for i in range(3)]
        assert [s.id for s in streams] == [1, 3, 5]
        for s in streams:
            await s.write(b"abc" * 20000)  # several DATA frames
            await s.close()
        for s in streams:
            out = b""
            while chunk := await s.read():
                out += chunk
            assert out == b"ABC" * 20000
        await client.ping()
        assert server_session.streams == {}  # closed both ways: forgotten
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_session_rejects_bad_stream_ids_and_ends_readers_on_close() -> None:
    seen: list[spdy.Stream] = []
    client, server_session, server = await _pipe_sessions(seen.append)
    try:
        stream = await client.open_stream({"a": "b"})
        # A stream id of the server's parity is a protocol error: answered with RST_STREAM.
        client.send(spdy.syn_stream_frame(client.compressor, 2, {}))
        await client.ping()
        assert len(seen) == 1 and 2 not in server_session.streams
        await server_session.close()
        assert await stream.read() == b""
        await asyncio.wait_for(client.closed.wait(), 10)
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


def test_websocket_accept_key_from_rfc() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_websocket_frame_layout() -> None:
    # RFC 6455 §5.7 examples.
    assert encode_frame(OP_TEXT, b"Hello", mask=False) == bytes.fromhex("810548656c6c6f")
    assert apply_mask(b"Hello", bytes.fromhex("37fa213d")) == bytes.fromhex("7f9f4d5158")
    assert encode_frame(OP_BINARY, b"x" * 256, mask=False)[:4] == bytes.fromhex("827e0100")
    assert encode_frame(OP_BINARY, b"x" * 65536, mask=False)[:10] == bytes.fromhex("827f0000000000010000")


async def _ws_pair() -> tuple[WebSocket, WebSocket, asyncio.Server]:
    ready: asyncio.Future[WebSocket] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ready.set_result(WebSocket(reader, writer))
        await done.wait()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    client = WebSocket(reader, writer, client=True)
    srv = await ready
    done.set()
    return client, srv, server


async def test_websocket_messages_fragments_ping_and_close() -> None:
    client, srv, server = await _ws_pair()
    try:
        await client.send(b"\x01" + b"y" * 70000)
        assert await srv.receive() == (OP_BINARY, b"\x01" + b"y" * 70000)
        # A fragmented text message with a ping in the middle.
        client.writer.write(encode_frame(OP_TEXT, b"he", mask=True, fin=False))
        client.writer.write(encode_frame(0x9, b"p", mask=True))
        client.writer.write(encode_frame(0x0, b"llo", mask=True))
        assert await srv.receive() == (OP_TEXT, b"hello")
        await srv.send(b"to client")
        assert await client.receive() == (OP_BINARY, b"to client")  # the pong was skipped
        await client.close()
        assert await srv.receive() is None and srv.close_code == 1000
        assert await client.receive() is None
    finally:
        client.abort()
        srv.abort()
        server.close()
        await server.wait_closed()


async def test_websocket_rejects_unmasked_client_frames() -> None:
    client, srv, server = await _ws_pair()
    try:
        client.writer.write(encode_frame(OP_BINARY, b"x", mask=False))
        assert await srv.receive() is None
        assert await client.receive() is None and client.close_code == 1002
    finally:
        client.abort()
        srv.abort()
        server.close()
        await server.wait_closed()


async def test_spdy_over_websocket_transport() -> None:
    client_ws, server_ws, server = await _ws_pair()
    try:
        received: list[spdy.Stream] = []
        srv = spdy.Session(WebSocketTransport(server_ws), server=True, on_stream=received.append)
        srv.start()
        cli = spdy.Session(WebSocketTransport(client_ws), server=False)
        cli.start()
        stream = await cli.open_stream({"streamType": "data", "port": "80"})
        await stream.write(b"through the tunnel")
        assert await received[0].read() == b"through the tunnel"
        assert received[0].header("PORT") == "80"
        await cli.close()
        await srv.close()
    finally:
        server.close()
        await server.wait_closed()


def test_negotiation_follows_client_preference() -> None:
    offered = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
    assert protocol.negotiate(offered, protocol.SPDY_REMOTECOMMAND, "X") == "v5.channel.k8s.io"
    assert protocol.negotiate(["v9", "v2.channel.k8s.io"], protocol.SPDY_REMOTECOMMAND, "X") \
        == "v2.channel.k8s.io"
    with pytest.raises(protocol.BadRequest) as info:
        protocol.negotiate(["v9"], protocol.SPDY_REMOTECOMMAND, "X-Accepted")
    assert info.value.status == 403 and "v4.channel.k8s.io" in info.value.headers["X-Accepted"]


def test_status_documents() -> None:
    assert json.loads(protocol.encode_status(protocol.success_status())) == \
        {"metadata": {}, "status": "Success"}
    failure = protocol.exit_code_status(3, "sh -c exit 3")
    assert failure["reason"] == "NonZeroExitCode"
    assert failure["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


def test_resize_messages_split_anywhere() -> None:
    parser = _JSONStream()
    assert parser.feed(b'{"Width":80,"Hei') == []
    assert parser.feed(b'ght":24}{"Width":100,"Height":40}') == [Size(80, 24), Size(100, 40)]


def test_tokens_are_single_use_and_expire() -> None:
    now = [0.0]
    cache = TokenCache(ttl=60, clock=lambda: now[0])
    req = ExecRequest("c", ["sh"], Options(False, True, False, False))
    token = cache.put(req)
    assert cache.peek(token) is req and cache.peek(token) is req  # looking does not spend it
    assert cache.take(token) is req
    assert cache.take(token) is None and cache.peek(token) is None
    token = cache.put(req)
    now[0] = 61
    assert cache.peek(token) is None and cache.take(token) is None


def test_url_hosts() -> None:
    assert _url_host("0.0.0.0") == "127.0.0.1"
    assert _url_host("::") == "[::1]"
    assert _url_host("fd00::1") == "[fd00::1]"
    assert _url_host("10.0.0.1") == "10.0.0.1"
