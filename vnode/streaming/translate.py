"""WebSocket sessions the runtime cannot take as they are.

- Remote command ``v5.channel.k8s.io`` (kubectl >= 1.30 asks for it first; containerd 1.6 answers
  403): vnode accepts the WebSocket, opens a SPDY/3.1 session with ``v4.channel.k8s.io`` to the
  runtime and maps channels to SPDY streams: 0 stdin, 1 stdout, 2 stderr, 3 error (the JSON
  Status with the exit code), 4 resize. v5's CLOSE message ``[255, 0]`` becomes a FIN on the stdin
  stream, which v4 over WebSocket has no way to say.
- Port-forward tunnelling ``SPDY/3.1+portforward.k8s.io``: the WebSocket's binary messages carry
  the client's SPDY frames; vnode unwraps them onto a SPDY upgrade to the runtime, and wraps the
  runtime's bytes back into messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import WSMsgType, web

from vnode.provider.protocols import StreamOptions
from vnode.streaming import spdy
from vnode.streaming.upgrade import Activity, Upstream, first_of, pump, read_or_idle, within_idle

log = logging.getLogger(__name__)

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
PORT_FORWARD = "portforward.k8s.io"
TUNNEL = "SPDY/3.1+portforward.k8s.io"
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255


async def _receive(ws: web.WebSocketResponse, activity: Activity, idle_timeout: float) -> bytes | None:
    """The next binary message; b"" when the client closed, None when the session idled out."""
    while True:
        msg = await within_idle(activity, idle_timeout, ws.receive)
        if msg is None:
            return None
        if msg.type == WSMsgType.BINARY and msg.data:
            return bytes(msg.data)
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return b""
        # text and empty messages have no meaning in these binary protocols: ignore them


async def remote_command(
    ws: web.WebSocketResponse, upstream: Upstream, options: StreamOptions, idle_timeout: float
) -> str:
    """Run a v5 WebSocket exec/attach session over the runtime's SPDY session; why it ended."""
    conn = spdy.SpdyConnection(upstream.reader, upstream.writer)
    error = await conn.open_stream({"streamType": "error"})
    stdin = await conn.open_stream({"streamType": "stdin"}) if options.stdin else None
    channel_of = {error: ERROR}
    if options.stdout:
        channel_of[await conn.open_stream({"streamType": "stdout"})] = STDOUT
    if options.stderr and not options.tty:
        channel_of[await conn.open_stream({"streamType": "stderr"})] = STDERR
    resize = await conn.open_stream({"streamType": "resize"}) if options.tty else None
    # As the runtime's own WebSocket server does: one empty message on the first output channel.
    await ws.send_bytes(bytes([min(channel_of.values())]))
    activity = Activity()
    stdin_open = stdin is not None

    async def from_client() -> str:
        nonlocal stdin_open
        while True:
            message = await _receive(ws, activity, idle_timeout)
            if message is None:
                return "idle timeout"
            if not message:
                return "client closed"
            channel, payload = message[0], message[1:]
            if channel == STDIN and stdin is not None and stdin_open:
                await conn.send(stdin, payload)
            elif channel == RESIZE and resize is not None:
                await conn.send(resize, payload)
            elif channel == CLOSE and payload[:1] == bytes([STDIN]) and stdin is not None and stdin_open:
                stdin_open = False
                await conn.send(stdin, b"", fin=True)

    async def from_runtime() -> str:
        status_seen = False
        async for frame in conn.frames():
            activity.touch()
            if frame.kind == "data":
                channel = channel_of.get(frame.stream_id)
                if channel is not None and frame.data:
                    await ws.send_bytes(bytes([channel]) + frame.data)
                if channel == ERROR and frame.data:
                    status_seen = True
                if channel == ERROR and frame.fin:
                    return "session ended"
            elif frame.kind == spdy.GOAWAY:
                return "session ended"
            elif frame.kind == spdy.RST_STREAM and frame.stream_id == error:
                # containerd resets the error stream once it has sent the exit status: a normal end
                return "session ended" if status_seen else "runtime reset the session"
        return "runtime closed"

    return await first_of(from_client(), from_runtime(), cleanup=conn.close)


async def tunnel(ws: web.WebSocketResponse, upstream: Upstream, idle_timeout: float) -> str:
    """Carry the client's SPDY frames from WebSocket messages to the runtime and back."""
    activity = Activity()

    async def to_runtime(message: bytes) -> None:
        upstream.writer.write(message)
        await upstream.writer.drain()

    return await first_of(
        pump(lambda: _receive(ws, activity, idle_timeout), to_runtime, "client closed"),
        pump(lambda: read_or_idle(upstream.reader, activity, idle_timeout), ws.send_bytes, "runtime closed"),
        cleanup=upstream.close,
    )


def offered_protocols(request: web.Request) -> list[str]:
    """The WebSocket subprotocols the client offers, in its order (bearer tokens left out)."""
    values = request.headers.getall("Sec-WebSocket-Protocol", [])
    names = [p.strip() for v in values for p in v.split(",")]
    return [p for p in names if p and not p.startswith("base64url.bearer.")]


async def close_quietly(ws: web.WebSocketResponse) -> None:
    with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
        await asyncio.wait_for(ws.close(), 5)
