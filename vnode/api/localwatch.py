"""The local API's watches (``?watch=1``): JSON lines of watch events until the end of the watch.

Separate from the routes and reads (``vnode.api.local``) because a watch is a long-lived stream
with rules of its own: resuming from a ``resourceVersion`` (replayed from the pod history, or a
410 Expired Status when it is too old), Table rows with the columns sent only first, ending on
``timeoutSeconds``, the client leaving or the server shutting down, and Events' own feed (a
repeated Event is MODIFIED with its count grown). Pods change through ``PodHistory``; nodes and
objects have no change feed: their watches send the current items and then stay quiet.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from vnode.api.apistatus import ApiError, status_body
from vnode.api.localresources import Resource
from vnode.api.server import while_connected
from vnode.api.watchcache import PodHistory, filtered
from vnode.kube.selectors import Filter
from vnode.kube.tables import table

Items = Callable[[Resource, str | None], tuple[list[dict[str, Any]], int]]
EventsFeed = Callable[[Callable[[], None]], Callable[[], None]]


class LocalWatches:
    """Serves the watches; ``items(resource, namespace)`` lists a resource's current items and
    the resourceVersion they are at; ``events_feed(callback)`` hears of new Events and returns
    the function that stops it (None: Events are watched like objects, with no feed)."""

    def __init__(self, history: PodHistory, items: Items, events_feed: EventsFeed | None) -> None:
        self.history = history
        self._items = items
        self._events_feed = events_feed
        self._closing = asyncio.Event()

    def close(self) -> None:
        """The server shuts down: every watch ends."""
        self._closing.set()

    async def watch(
        self, request: web.Request, resource: Resource, wanted: Filter, as_table: bool
    ) -> web.StreamResponse:
        """JSON lines of watch events: the current items (or the changes since ``resourceVersion``),
        then live pod changes until ``timeoutSeconds``, the client leaving, or shutdown."""
        try:
            timeout = float(request.query.get("timeoutSeconds") or 1800)
        except ValueError:
            raise ApiError(400, "timeoutSeconds: invalid value") from None
        raw_rv = request.query.get("resourceVersion") or "0"
        if not raw_rv.isdigit():
            raise ApiError(400, f"invalid resourceVersion {raw_rv!r}")
        if resource.plural == "events" and self._events_feed is not None:
            return await self._watch_events(request, resource, wanted, as_table, timeout)
        watcher = self.history.subscribe() if resource.plural == "pods" else None
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        first = True

        async def send(type_: str, obj: dict[str, Any]) -> None:
            nonlocal first
            if as_table and type_ != "ERROR":
                obj = table(resource.kind, [obj], obj["metadata"].get("resourceVersion", ""),
                            datetime.now(tz=UTC), columns=first)  # fmt: skip
                first = False
            await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")

        try:
            await response.prepare(request)
            start = int(raw_rv)
            if start == 0 or watcher is None:
                items, last = self._items(resource, wanted.namespace)
                for item in items:
                    if wanted.wants(item):
                        await send("ADDED", item)
            else:
                replay = self.history.since(start)
                if replay is None:
                    expired = status_body(
                        410, "Expired", f"too old resource version: {start} ({self.history.rv})"
                    )
                    await send("ERROR", expired)
                    return response
                last = start
                for event in replay:
                    if (seen := filtered(event, wanted)) is not None:
                        await send(*seen)
                    last = event.rv
            async with asyncio.timeout(timeout):
                if watcher is None:
                    # no change feed: hold the stream until the end
                    await while_connected(request, self._closing.wait())
                    return response
                while True:
                    change = await while_connected(request, watcher.queue.get())
                    if change is None or (watcher.closed and watcher.queue.empty()):
                        break
                    if change.rv <= last:
                        continue
                    last = change.rv
                    if (seen := filtered(change, wanted)) is not None:
                        await send(*seen)
        except (TimeoutError, ConnectionResetError):
            pass
        finally:
            if watcher is not None:
                self.history.unsubscribe(watcher)
        return response

    async def _watch_events(
        self, request: web.Request, resource: Resource, wanted: Filter, as_table: bool, timeout: float
    ) -> web.StreamResponse:
        """The node's Events: those remembered, then each new one (ADDED) or repeat (MODIFIED, its
        count grown), as ``kubectl get events -w`` shows them."""
        assert self._events_feed is not None
        changed = asyncio.Event()
        stop = self._events_feed(changed.set)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        sent: dict[str, int] = {}  # event name -> count sent
        first = True
        try:
            await response.prepare(request)
            async with asyncio.timeout(timeout):
                while True:
                    changed.clear()
                    for event in self._items(resource, wanted.namespace)[0]:
                        name, count = event["metadata"]["name"], int(event.get("count", 1))
                        if not wanted.wants(event) or sent.get(name) == count:
                            continue
                        kind = "MODIFIED" if name in sent else "ADDED"
                        sent[name] = count
                        obj = event
                        if as_table:
                            obj = table(resource.kind, [event], "", datetime.now(tz=UTC), columns=first)
                            first = False
                        await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                    await while_connected(request, _first_of(changed.wait(), self._closing.wait()))
                    if self._closing.is_set():
                        break
        except (TimeoutError, ConnectionResetError):
            pass
        finally:
            stop()
        return response


async def _first_of(*waits: Awaitable[Any]) -> None:
    """Return when the first of ``waits`` is done; the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
