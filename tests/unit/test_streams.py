"""The streaming endpoints in-process: SPDY framing, pass-through, refusals, limits, idle timeout.

The runtime's streaming server is stood in for by a raw asyncio server that answers the upgrade
and echoes bytes (or refuses, as containerd does for a protocol it lacks); the real one is used by
``tests/integration/test_streams.py``.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from integration.faults import serving
from vnode import errors
from vnode.api.server import KubeletApp, KubeletHandlers
from vnode.api.streams import StreamHandlers, StreamLimits
from vnode.provider.protocols import StreamOptions
from vnode.streaming import spdy

UPGRADE = (
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
)
REFUSAL = (
    b"HTTP/1.1 403 Forbidden\r\nX-Accepted-Stream-Protocol-Versions: v4.channel.k8s.io\r\n"
    b"Content-Length: 12\r\n\r\nno protocol\n"
)


@asynccontextmanager
async def runtime_server(answer: bytes = UPGRADE) -> AsyncIterator[list[bytes]]:
    """A streaming server: reads the upgrade request, answers ``answer``, echoes what follows.
    Yields the list of request heads it received."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(answer)
        while answer is UPGRADE and (chunk := await reader.read(65536)):
            writer.write(chunk)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    heads.append(f"http://127.0.0.1:{port}/exec/token".encode())
    async with server:
        yield heads


class Provider:
    """A StreamProvider whose every URL is the fake runtime's."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.calls: list[tuple[Any, ...]] = []

    async def exec_url(self, namespace: str, pod: str, uid: str | None, container: str,
                       command: list[str], options: StreamOptions) -> str:  # fmt: skip
        self.calls.append((namespace, pod, uid, container, command, options))
        return self.url

    async def attach_url(self, namespace: str, pod: str, uid: str | None, container: str,
                         options: StreamOptions) -> str:  # fmt: skip
        return self.url

    async def port_forward_url(self, namespace: str, pod: str, uid: str | None, ports: list[int]) -> str:
        self.calls.append((namespace, pod, uid, ports))
        return self.url

    async def run_sync(self, namespace: str, pod: str, uid: str | None, container: str,
                       command: list[str]) -> tuple[bytes, bytes, int]:  # fmt: skip
        return b"ran " + " ".join(command).encode() + b"\n", b"", 0


@asynccontextmanager
async def kubelet(answer: bytes = UPGRADE, **limits: Any) -> AsyncIterator[tuple[str, Provider]]:
    async with runtime_server(answer) as heads:
        provider = Provider(heads.pop().decode())
        streams = StreamHandlers(provider, StreamLimits(**limits))
        app = KubeletApp(KubeletHandlers(pods=None, logs=None, streams=streams)).app
        async with serving(app) as url:
            yield url, provider


async def raw_request(url: str, head: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.encode())
    await writer.drain()
    return reader, writer, await reader.readuntil(b"\r\n\r\n")


SPDY_EXEC = (
    "POST /exec/default/pod/main?command=sh&input=1&output=1 HTTP/1.1\r\nHost: x\r\n"
    "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
    "Authorization: Bearer secret\r\n\r\n"
)


async def test_a_spdy_upgrade_passes_through_byte_for_byte() -> None:
    async with kubelet() as (url, provider):
        reader, writer, head = await raw_request(url, SPDY_EXEC)
        assert head.startswith(b"HTTP/1.1 101")
        assert b"X-Stream-Protocol-Version: v4.channel.k8s.io" in head
        payload = bytes(range(256)) * 1000
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        writer.close()
    assert provider.calls[0][:5] == ("default", "pod", None, "main", ["sh"])
    assert provider.calls[0][5] == StreamOptions(stdin=True, stdout=True, stderr=False, tty=False)


async def test_the_runtime_never_sees_the_clients_credentials() -> None:
    async with runtime_server() as heads:
        provider = Provider(heads.pop().decode())
        app = KubeletApp(KubeletHandlers(None, None, streams=StreamHandlers(provider, StreamLimits()))).app
        async with serving(app) as url:
            _, writer, _ = await raw_request(url, SPDY_EXEC)
            writer.close()
    forwarded = heads[0].decode()
    assert "Upgrade: SPDY/3.1" in forwarded and "X-Forwarded-For: 127.0.0.1" in forwarded
    assert "secret" not in forwarded


async def test_a_runtime_refusal_is_relayed() -> None:
    async with kubelet(REFUSAL) as (url, _):
        _, writer, head = await raw_request(url, SPDY_EXEC)
        assert head.startswith(b"HTTP/1.1 403")
        assert b"X-Accepted-Stream-Protocol-Versions: v4.channel.k8s.io" in head
        writer.close()


@pytest.mark.parametrize(
    ("request_line", "status", "allow"),
    [
        ("PUT /exec/ns/pod/c?command=sh&output=1", 405, "GET, POST"),
        ("GET /run/ns/pod/c?cmd=ls", 405, "POST"),
        ("GET /exec/ns/pod/c?command=sh&output=1", 400, None),  # not an upgrade
        ("GET /exec/ns/pod/c?command=sh", 400, None),  # no stream asked for
        ("GET /exec/ns/pod/c?output=1", 400, None),  # no command
        ("GET /portForward/ns/pod?port=0", 400, None),
        ("GET /portForward/ns/pod?port=http", 400, None),
        ("CONNECT /", 405, "GET, HEAD"),  # no path segment at all (found by the fuzzer: was a 500)
    ],
)
async def test_bad_requests_are_4xx_with_a_reason(request_line: str, status: int, allow: str | None) -> None:
    async with kubelet() as (url, _):
        _, writer, head = await raw_request(url, f"{request_line} HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status}".encode()), head
        if allow is not None:
            assert f"Allow: {allow}".encode() in head
        writer.close()


async def test_run_returns_the_output() -> None:
    async with kubelet() as (url, _):
        reader, writer, head = await raw_request(
            url, "POST /run/ns/pod/c?cmd=ls%20-l HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(len(b"ran ls -l\n")) == b"ran ls -l\n"
        writer.close()


async def test_sessions_past_the_per_pod_limit_get_429() -> None:
    async with kubelet(per_pod=1) as (url, _):
        _, first, head = await raw_request(url, SPDY_EXEC)
        assert head.startswith(b"HTTP/1.1 101")
        _, second, refused = await raw_request(url, SPDY_EXEC)
        assert refused.startswith(b"HTTP/1.1 429") and b"Retry-After: 60" in refused
        second.close()
        first.close()


async def test_an_idle_session_is_closed() -> None:
    async with kubelet(idle_timeout=0.3) as (url, _):
        reader, writer, head = await raw_request(url, SPDY_EXEC)
        assert head.startswith(b"HTTP/1.1 101")
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        # nothing moves now: vnode ends the session, the client sees EOF
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()


# -- SPDY/3.1 framing -----------------------------------------------------------------------


def test_the_header_dictionary_is_the_specs() -> None:
    # 1423 bytes; the tail starts right after "origin"
    assert len(spdy.DICTIONARY) == 1423
    assert spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert b"\x00\x00\x00\x06200 OK\x00\x00\x00\x07version" in spdy.DICTIONARY
    assert b"\x00\x00\x00\x06origin100101201202205206300302" in spdy.DICTIONARY
    assert b"417502504505203 Non-Authoritative Information204 No Content" in spdy.DICTIONARY
    assert spdy.DICTIONARY.endswith(b"Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml"
                                    b",application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,"
                                    b"deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.")  # fmt: skip


async def _pair() -> tuple[spdy.SpdyConnection, asyncio.StreamReader, asyncio.StreamWriter]:
    """A client connection and the raw server end of a socket pair."""
    served: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Future()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.set_result((reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    server_reader, server_writer = await served
    server.close()
    return spdy.SpdyConnection(reader, writer), server_reader, server_writer


async def test_streams_open_with_compressed_headers_and_data_frames() -> None:
    conn, reader, writer = await _pair()
    inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)
    for expected_id, kind in ((1, "error"), (3, "stdin")):
        stream_id = await conn.open_stream({"streamType": kind})
        assert stream_id == expected_id
        first, second = struct.unpack(">II", await reader.readexactly(8))
        assert first == 0x8000_0000 | (3 << 16) | spdy.SYN_STREAM
        body = await reader.readexactly(second & 0xFFFFFF)
        assert struct.unpack_from(">I", body)[0] == expected_id
        assert spdy.decode_headers(inflate.decompress(body[10:])) == {"streamtype": kind}
    await conn.send(3, b"x" * (spdy.MAX_DATA + 5), fin=True)
    sizes = []
    for _ in range(2):
        stream_id, second = struct.unpack(">II", await reader.readexactly(8))
        assert stream_id == 3
        sizes.append((second >> 24, second & 0xFFFFFF))
        await reader.readexactly(second & 0xFFFFFF)
    assert sizes == [(0, spdy.MAX_DATA), (spdy.FLAG_FIN, 5)]
    conn.close()
    writer.close()


async def test_frames_from_the_server_are_reported_and_pings_answered() -> None:
    conn, reader, writer = await _pair()
    deflate = zlib.compressobj(zdict=spdy.DICTIONARY)
    block = deflate.compress(spdy.encode_headers({"a": "b"})) + deflate.flush(zlib.Z_SYNC_FLUSH)
    writer.write(spdy.control(spdy.SYN_REPLY, struct.pack(">I", 1) + block))
    writer.write(spdy.control(spdy.PING, struct.pack(">I", 2)))
    writer.write(spdy.data(1, b"status", spdy.FLAG_FIN))
    writer.write(spdy.control(spdy.WINDOW_UPDATE, struct.pack(">II", 1, 100)))
    writer.write(spdy.control(spdy.GOAWAY, struct.pack(">II", 0, 0)))
    writer.write_eof()
    frames = [f async for f in conn.frames()]
    assert [(f.kind, f.stream_id, f.data, f.fin) for f in frames] == [
        (spdy.SYN_REPLY, 1, b"", False),
        ("data", 1, b"status", True),
        (spdy.GOAWAY, 0, b"", False),
    ]
    assert frames[0].headers == {"a": "b"}
    assert await reader.readexactly(12) == spdy.control(spdy.PING, struct.pack(">I", 2))
    conn.close()
    writer.close()
    await writer.wait_closed()


async def test_a_truncated_frame_is_a_protocol_error() -> None:
    conn, _, writer = await _pair()
    writer.write(spdy.data(1, b"0123456789")[:12])
    writer.close()
    with pytest.raises(errors.ProtocolError):
        _ = [f async for f in conn.frames()]
    conn.close()
