"""Object change detection by watch: after one GET, a watch on that object keeps the copy current.

A real HTTP master (aiohttp on loopback) that serves GETs and streams the watch events the test
sends it; ``TTL_SECONDS`` is set to 0, so every GET the master sees after the first would be the
old polling, and none may happen while the watch is open.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from integration.faults import serving
from integration.node import wait_for
from vnode.clients.kubeconfig import ClusterAccess
from vnode.clients.masters import Masters
from vnode.controllers import objects
from vnode.controllers.objects import ObjectCache
from vnode.store import Store

CM = "/api/v1/namespaces/default/configmaps/cm"
COLLECTION = "/api/v1/namespaces/default/configmaps"


def config_map(rv: str, value: str) -> dict[str, Any]:
    return {
        "kind": "ConfigMap",
        "metadata": {"name": "cm", "uid": "u1", "resourceVersion": rv},
        "data": {"k": value},
    }


class Master:
    """Serves ``obj`` at CM; a watch on the collection streams what ``push`` sends (None ends it)."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = config_map("1", "v1")
        self.gets = 0
        self.watches: list[dict[str, str]] = []
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == COLLECTION and request.query.get("watch") == "true":
            self.watches.append(dict(request.query))
            response = web.StreamResponse()
            await response.prepare(request)
            while (event := await self.events.get()) is not None:
                await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
            return response
        if request.path == CM:
            self.gets += 1
            if self.obj is None:
                return web.json_response({"kind": "Status", "code": 404}, status=404)
            return web.json_response(self.obj)
        return web.json_response({"kind": "Status", "code": 404}, status=404)


@pytest.fixture
async def master() -> AsyncIterator[tuple[Master, str]]:
    state = Master()
    async with serving(state.handle) as url:
        yield state, url


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "store", map_size=16 << 20)
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_watch_replaces_polling_and_follows_changes(
    master: tuple[Master, str], store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objects, "TTL_SECONDS", 0.0)
    state, url = master
    access = ClusterAccess((url,), None)
    masters, watches = Masters(access), Masters(access, limit=objects.MAX_WATCHES)
    cache = ObjectCache(masters, store, watches=watches)
    changes: list[tuple[str, str, str]] = []
    cache.add_listener(lambda *change: changes.append(change))
    try:
        assert (await cache.get_object("configmaps", "default", "cm"))["data"] == {"k": "v1"}

        async def watching() -> bool:
            return bool(state.watches)

        await wait_for(watching, timeout=10, interval=0.01, what="the watch to open")
        assert state.watches[0]["fieldSelector"] == "metadata.name=cm"
        assert state.watches[0]["resourceVersion"] == "1"
        for _ in range(5):
            await cache.get_object("configmaps", "default", "cm")
        assert state.gets == 1, "the object was fetched again while its watch was open"
        assert cache.watched("configmaps", "default", "cm")
        assert not cache.watched("configmaps", "default", "other")

        writes = cache.writes
        state.events.put_nowait({"type": "MODIFIED", "object": config_map("2", "v2")})

        async def value() -> Any:
            obj = await cache.get_object("configmaps", "default", "cm")
            return obj["data"]["k"] if obj is not None else None

        await wait_for(lambda: _is(value, "v2"), timeout=10, interval=0.01, what="the change to arrive")
        assert cache.writes == writes + 1  # the new version is kept for offline use
        assert changes == [("configmaps", "default", "cm")]  # the pods using it are woken
        state.events.put_nowait({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "5"}}})
        state.events.put_nowait({"type": "DELETED", "object": config_map("6", "v2")})
        await wait_for(lambda: _is(value, None), timeout=10, interval=0.01, what="the deletion to arrive")
        assert state.gets == 1

        # The server ends the watch: it resumes from the last version it saw, without a GET.
        state.events.put_nowait(None)

        async def rewatched() -> bool:
            return len(state.watches) == 2

        await wait_for(rewatched, timeout=10, interval=0.01, what="the watch to resume")
        assert state.watches[1]["resourceVersion"] == "6"
        assert state.gets == 1

        # 410 Gone: the object is fetched once and watched from its version.
        state.obj = config_map("9", "v3")
        state.events.put_nowait(
            {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
        )
        state.events.put_nowait(None)

        async def refetched() -> bool:
            return len(state.watches) == 3

        await wait_for(refetched, timeout=10, interval=0.01, what="the watch after 410")
        assert state.gets == 2 and state.watches[2]["resourceVersion"] == "9"
        assert await value() == "v3"
    finally:
        state.events.put_nowait(None)  # the master's side of an open watch ends
        await cache.close()
        await masters.close()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("watch:")]


async def test_without_a_watch_client_objects_are_fetched_after_the_ttl(
    master: tuple[Master, str], store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objects, "TTL_SECONDS", 0.0)
    state, url = master
    masters = Masters(ClusterAccess((url,), None))
    cache = ObjectCache(masters, store)
    try:
        for _ in range(3):
            await cache.get_object("configmaps", "default", "cm")
        assert state.gets == 3 and not state.watches
    finally:
        await cache.close()
        await masters.close()


async def _is(probe: Any, expected: Any) -> bool:
    return bool(await probe() == expected)
