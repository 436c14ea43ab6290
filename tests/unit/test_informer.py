"""The list-watch loop: a watch the server ends is resumed from the last version, not relisted.

A real HTTP master (aiohttp on loopback) answers the list and streams what the test sends to
each watch; ``None`` ends a watch as the server does when its ``timeoutSeconds`` runs out.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from integration.faults import serving
from integration.node import wait_for
from vnode.clients.kubeconfig import ClusterAccess
from vnode.clients.masters import Masters
from vnode.controllers.informer import ListWatch

PATH = "/api/v1/pods"


class Master:
    def __init__(self) -> None:
        self.lists = 0
        self.watches: list[dict[str, str]] = []
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "true":
            self.lists += 1
            return web.json_response({"metadata": {"resourceVersion": "10"}, "items": []})
        self.watches.append(dict(request.query))
        response = web.StreamResponse()
        await response.prepare(request)
        while (event := await self.events.get()) is not None:
            await response.write(json.dumps(event).encode() + b"\n")
        await response.write_eof()
        return response


@pytest.fixture
async def master() -> AsyncIterator[tuple[Master, str]]:
    state = Master()
    async with serving(state.handle) as url:
        yield state, url


def pod(rv: str) -> dict[str, Any]:
    return {"metadata": {"name": "p", "uid": "u", "resourceVersion": rv}}


async def test_a_watch_ended_by_the_server_resumes_from_the_last_version(master: tuple[Master, str]) -> None:
    state, url = master
    masters = Masters(ClusterAccess((url,), None))
    applied: list[tuple[str, str]] = []

    async def replace(items: list[Any]) -> None:
        return None

    def apply(kind: str, obj: dict[str, Any]) -> bool:
        applied.append((kind, obj["metadata"]["resourceVersion"]))
        return False

    async def settled() -> None:
        return None

    informer = ListWatch(masters, PATH, {}, what="pods", replace=replace, apply=apply, settled=settled)
    task = asyncio.create_task(informer.run())
    try:

        def watches(n: int) -> Any:
            async def probe() -> bool:
                return len(state.watches) == n

            return probe

        await wait_for(watches(1), timeout=10, interval=0.01, what="the first watch")
        assert state.watches[0]["resourceVersion"] == "10"
        assert 1800 <= int(state.watches[0]["timeoutSeconds"]) <= 3600
        state.events.put_nowait({"type": "ADDED", "object": pod("11")})
        state.events.put_nowait({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}})
        state.events.put_nowait(None)
        await wait_for(watches(2), timeout=10, interval=0.01, what="the watch to resume")
        assert state.watches[1]["resourceVersion"] == "15"
        assert state.lists == 1 and applied == [("ADDED", "11")]

        # 410 Gone: list again, then watch from the list's version.
        state.events.put_nowait({"type": "ERROR", "object": {"code": 410, "message": "too old"}})
        state.events.put_nowait(None)
        await wait_for(watches(3), timeout=10, interval=0.01, what="the watch after a new list")
        assert state.lists == 2 and state.watches[2]["resourceVersion"] == "10"
    finally:
        state.events.put_nowait(None)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await masters.close()
