"""A TCP relay the harness owns, so a test can cut one node's link to the control plane while
the API servers keep running (what a dropped uplink at an edge site does).

``cut()`` closes every relayed connection and makes new ones hang unanswered (accepted by the
kernel, never read, like a black-holed route), ``restore()`` relays again. It runs on its own
thread and event loop so that synchronous, session-wide fixtures can own it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any


class Relay:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay", daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._held: set[asyncio.StreamWriter] = set()
        self._cut = False
        self.relayed = 0  # connections relayed so far (a test of connection reuse counts them)
        self._thread.start()
        self._call(self._start())

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self._held.add(writer)  # never answered until restore() or close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._open.update((writer, up_writer))
        self.relayed += 1
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    def cut(self) -> None:
        async def cut() -> None:
            self._cut = True
            for w in list(self._open):
                w.transport.abort()

        self._call(cut())

    def restore(self) -> None:
        async def restore() -> None:
            self._cut = False
            for w in list(self._held):
                w.transport.abort()  # the client sees the hung attempt fail and dials again
            self._held.clear()

        self._call(restore())

    def close(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._open | self._held):
                w.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)

        self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
