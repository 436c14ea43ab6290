"""A SPDY/3.1 client connection: just what a remote-command session needs.

The runtime's streaming server (containerd embeds Kubernetes' ``spdystream``) is the peer. It
neither sends nor honours WINDOW_UPDATE, so this client does no flow control of its own beyond
TCP's; frames are written whole with one ``write`` and the header blocks share one zlib context per
direction, as SPDY/3 requires. Frame layouts are those of the SPDY/3 draft (section 2.2 to 2.6).
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from vnode.errors import ProtocolError

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_CANCEL = 5
MAX_DATA = 1 << 16  # bytes per DATA frame written (the format allows up to 2**24 - 1)

# The SPDY/3 header-compression dictionary (draft 3, section 2.6.10.1): length-prefixed header
# names and common values, then a run of status lines, dates and media types.
_DICT_NAMES = (
    "options head post put delete trace accept accept-charset accept-encoding accept-language "
    "accept-ranges age allow authorization cache-control connection content-base content-encoding "
    "content-language content-length content-location content-md5 content-range content-type date "
    "etag expect expires from host if-match if-modified-since if-none-match if-range "
    "if-unmodified-since last-modified location max-forwards pragma proxy-authenticate "
    "proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade "
    "user-agent vary via warning www-authenticate method get status"
)
_DICT_VALUES = "version HTTP/1.1 url public set-cookie keep-alive origin"
_DICT_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,"
    "deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)


def _dictionary() -> bytes:
    words = [*_DICT_NAMES.split(), "200 OK", *_DICT_VALUES.split()]
    return b"".join(struct.pack(">I", len(w)) + w.encode() for w in words) + _DICT_TAIL.encode()


DICTIONARY = _dictionary()


@dataclass(frozen=True)
class Frame:
    """A frame as the session's reader reports it: ``kind`` is ``data`` or a control type."""

    kind: int | str
    stream_id: int = 0
    data: bytes = b""
    fin: bool = False
    headers: Mapping[str, str] | None = None


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """A name/value block (uncompressed); names are lowercased as SPDY/3 requires."""
    parts = [struct.pack(">I", len(headers))]
    for name, value in headers.items():
        n, v = name.lower().encode(), value.encode()
        parts += [struct.pack(">I", len(n)), n, struct.pack(">I", len(v)), v]
    return b"".join(parts)


def decode_headers(block: bytes) -> dict[str, str]:
    """Parse a decompressed name/value block; repeated values are NUL-joined, kept as one string."""
    try:
        (count,), pos, out = struct.unpack_from(">I", block), 4, {}
        for _ in range(count):
            (n,) = struct.unpack_from(">I", block, pos)
            name = block[pos + 4 : pos + 4 + n].decode()
            pos += 4 + n
            (v,) = struct.unpack_from(">I", block, pos)
            out[name] = block[pos + 4 : pos + 4 + v].decode()
            pos += 4 + v
    except (struct.error, UnicodeDecodeError) as exc:
        raise ProtocolError(f"bad header block: {exc}") from exc
    return out


def control(kind: int, payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload


def data(stream_id: int, payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(payload)) + payload


class SpdyConnection:
    """The client end of one SPDY/3.1 session over an upgraded connection (odd stream IDs)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._deflate = zlib.compressobj(zdict=DICTIONARY)
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._next_id = 1

    def _compress(self, headers: Mapping[str, str]) -> bytes:
        return self._deflate.compress(encode_headers(headers)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def _decompress(self, block: bytes) -> dict[str, str]:
        try:
            return decode_headers(self._inflate.decompress(block))
        except zlib.error as exc:
            raise ProtocolError(f"bad compressed header block: {exc}") from exc

    async def open_stream(self, headers: Mapping[str, str]) -> int:
        """Send SYN_STREAM; the reply is not waited for (the server replies to every stream)."""
        stream_id, self._next_id = self._next_id, self._next_id + 2
        body = struct.pack(">IIBB", stream_id, 0, 0, 0) + self._compress(headers)
        self._writer.write(control(SYN_STREAM, body))
        await self._writer.drain()
        return stream_id

    async def send(self, stream_id: int, payload: bytes, *, fin: bool = False) -> None:
        """DATA frames carrying ``payload``; ``fin`` half-closes the stream after it."""
        view = memoryview(payload)
        while len(view) > MAX_DATA:
            self._writer.write(data(stream_id, bytes(view[:MAX_DATA])))
            view = view[MAX_DATA:]
        self._writer.write(data(stream_id, bytes(view), FLAG_FIN if fin else 0))
        await self._writer.drain()

    async def reset(self, stream_id: int) -> None:
        self._writer.write(control(RST_STREAM, struct.pack(">II", stream_id, RST_CANCEL)))
        await self._writer.drain()

    async def frames(self) -> AsyncIterator[Frame]:
        """Frames from the server until it closes; PINGs are answered here and not reported."""
        while True:
            try:
                head = await self._reader.readexactly(8)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise ProtocolError("connection closed inside a frame header") from exc
                return
            first, second = struct.unpack(">II", head)
            flags, length = second >> 24, second & 0xFFFFFF
            try:
                payload = await self._reader.readexactly(length)
            except asyncio.IncompleteReadError as exc:
                raise ProtocolError("connection closed inside a frame") from exc
            if not first & 0x80000000:
                yield Frame("data", first & 0x7FFFFFFF, payload, bool(flags & FLAG_FIN))
                continue
            version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
            if version != VERSION:
                raise ProtocolError(f"SPDY version {version} frame, expected {VERSION}")
            frame = self._control(kind, flags, payload)
            if frame is not None:
                yield frame

    def _control(self, kind: int, flags: int, payload: bytes) -> Frame | None:
        fin = bool(flags & FLAG_FIN)
        if len(payload) < 4 and kind != SETTINGS:
            raise ProtocolError(f"control frame {kind} too short")
        (word,) = struct.unpack_from(">I", payload)
        stream_id = word & 0x7FFFFFFF
        if kind == SYN_STREAM:  # the server may not push streams to us: refuse, keep the zlib state
            self._decompress(payload[10:])
            self._writer.write(control(RST_STREAM, struct.pack(">II", stream_id, 3)))
            return None
        if kind in (SYN_REPLY, HEADERS):
            return Frame(kind, stream_id, fin=fin, headers=self._decompress(payload[4:]))
        if kind == PING:
            if word % 2 == 0:  # the server's ping: echo it
                self._writer.write(control(PING, payload[:4]))
            return None
        if kind in (RST_STREAM, GOAWAY):
            return Frame(kind, stream_id)
        return None  # SETTINGS, WINDOW_UPDATE and unknown types carry nothing this client needs

    def close(self) -> None:
        self._writer.close()
