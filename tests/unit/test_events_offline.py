"""Events while the control plane is out of reach: kept in the store, posted when it returns.

A real LMDB store, a master answering 500 (offline) and a real aiohttp master that records the
Events it is sent; a "restart" is a new EventPoster on the same store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from integration.faults import FaultyMaster, serving
from integration.node import wait_for
from vnode.clients.kubeconfig import ClusterAccess
from vnode.clients.masters import Masters
from vnode.controllers import events as poster_module
from vnode.controllers.eventlog import RecordedEvent
from vnode.controllers.events import EventPoster
from vnode.store import Store
from vnode.store.layout import EVENTS as TABLE


def event(i: int) -> RecordedEvent:
    return RecordedEvent(
        datetime.now(tz=UTC), "default", f"pod-{i}", f"uid-{i}", "Normal", "Started", f"#{i}"
    )


class Sink:
    """A master that accepts Events and remembers their messages in order."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.counts: list[int] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.messages.append(body["message"])
        self.counts.append(body["count"])
        return web.json_response({**body, "metadata": {**body["metadata"], "uid": "e"}}, status=201)


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    state = Sink()
    async with serving(state.handle) as state.url:
        yield state


@contextlib.asynccontextmanager
async def running(url: str, store: Store) -> AsyncIterator[EventPoster]:
    masters = Masters(ClusterAccess((url,), None))
    poster = EventPoster(masters, "edge1", store)
    task = asyncio.create_task(poster.run())
    try:
        yield poster
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await masters.close()


def until(probe: Callable[[], bool], what: str) -> Awaitable[bool]:
    async def check() -> bool:
        return probe()

    return wait_for(check, timeout=10, interval=0.01, what=what)


async def test_events_of_an_outage_survive_a_restart_and_are_posted_in_order(
    tmp_path: Path, sink: Sink
) -> None:
    store = await Store.open(tmp_path / "store", map_size=16 << 20)
    try:
        async with FaultyMaster("error") as dead, running(dead.url, store) as offline:
            for i in range(3):
                offline.record(event(i))
            await until(lambda: len(store.items(TABLE)) == 4, "three events and the count kept")
            offline.record(event(3))  # arrives while offline: kept too, without another post try
            await until(lambda: len(store.items(TABLE)) == 5, "the fourth event kept")
            assert offline.offline
        async with running(sink.url, store) as online:  # vnode started again, the link is back
            await until(lambda: len(sink.messages) == 4, "the kept events posted")
            await until(lambda: store.items(TABLE) == [("dropped", 0)], "the store emptied")
            assert sink.messages == ["#0", "#1", "#2", "#3"] and not online.offline
            online.record(event(4))
            await until(lambda: len(sink.messages) == 5, "an event posted online")
            assert store.items(TABLE) == [("dropped", 0)]  # online: posted at once, never kept
    finally:
        await store.close()


async def test_a_long_outage_keeps_the_newest_events_and_counts_the_rest(
    tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poster_module, "QUEUE_SIZE", 5)
    store = await Store.open(tmp_path / "store", map_size=16 << 20)
    try:
        async with FaultyMaster("error") as dead, running(dead.url, store) as offline:
            for i in range(8):
                offline.record(event(i))
            await until(lambda: store.get(TABLE, "dropped") == 3, "the dropped count kept")
            await until(lambda: len(store.items(TABLE)) == 6, "the five newest kept")
        async with running(sink.url, store) as online:
            await until(lambda: len(sink.messages) == 5, "the kept events posted")
            assert sink.messages == ["#3", "#4", "#5", "#6", "#7"]
            assert online.dropped == 3
    finally:
        await store.close()


async def test_repeats_during_an_outage_are_posted_once_with_their_count(tmp_path: Path, sink: Sink) -> None:
    store = await Store.open(tmp_path / "store", map_size=16 << 20)
    crash = event(9)
    try:
        async with FaultyMaster("error") as dead, running(dead.url, store) as offline:
            for _ in range(5):
                offline.record(crash)
            offline.record(event(10))
            await until(lambda: len(store.items(TABLE)) == 7, "the events kept")
        async with running(sink.url, store):
            await until(lambda: len(sink.messages) == 2, "the backlog posted")
            assert list(zip(sink.messages, sink.counts, strict=True)) == [("#9", 5), ("#10", 1)]
    finally:
        await store.close()
