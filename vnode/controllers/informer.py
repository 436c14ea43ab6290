"""List, then watch, one collection of the API; list again whenever the watch can't go on.

One loop for every object kind the node follows (its pods, its own Node, and next the objects its
pods reference): a full list hands the complete set to ``replace``, then a watch from the list's
resourceVersion (with bookmarks) hands each change to ``apply``; after a burst of changes
``settled`` runs once. When the server ends a watch (its randomized ``timeoutSeconds``), the next
one resumes from the last resourceVersion seen, as a reflector does: a periodic relist would cost
an idle node a request and the whole collection every few minutes. A 410 Gone, a broken watch or
a failed-over master leads to a fresh list: the list, not a replay, is the truth, so no change is
missed across a failover. Failures are retried with capped, jittered back-off, forever.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from vnode import errors
from vnode.clients.masters import Masters

log = logging.getLogger(__name__)

BURST_SECONDS = 0.05  # changes arriving this close together are settled once
MAX_BACKOFF = 30.0
WATCH_SECONDS = (1800, 3600)  # the server ends a watch after a time drawn from this; the next resumes

Obj = dict[str, Any]


class ListWatch:
    """See the module docstring. ``apply(kind, obj)`` returns whether ``settled`` should run."""

    def __init__(
        self,
        masters: Masters,
        path: str,
        params: dict[str, str],
        *,
        what: str,
        replace: Callable[[list[Obj]], Awaitable[None]],
        apply: Callable[[str, Obj], bool],
        settled: Callable[[], Awaitable[None]],
    ) -> None:
        self.masters = masters
        self.path = path
        self.params = params
        self.what = what
        self.replace = replace
        self.apply = apply
        self.settled = settled
        self.synced = asyncio.Event()
        self.lists = 0  # full lists done, for tests and `vnode status`

    async def run(self) -> None:
        delay = 0.5
        rv: str | None = None
        while True:
            try:
                if rv is None:
                    rv = await self._list()
                    delay = 0.5
                rv = await self._watch(rv)  # ended by the server: resume from where it got to
            except errors.Expired as exc:  # the version is too old
                log.info("%s watch expired (%s); listing again", self.what, exc)
                rv = None
            except errors.VnodeError as exc:
                rv = None
                log.warning("%s informer: %s; listing again in %.1fs", self.what, exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, MAX_BACKOFF)

    async def _list(self) -> str:
        body = await self.masters.request("GET", self.path, params=self.params, timeout=30)
        await self.replace(list(body.get("items") or []))
        self.lists += 1
        self.synced.set()
        return str(body["metadata"]["resourceVersion"])

    async def _watch(self, rv: str) -> str:
        """Apply events until the server ends the watch; returns the last resourceVersion seen."""
        timeout = random.randint(*WATCH_SECONDS)
        params = {**self.params, "resourceVersion": rv, "timeoutSeconds": str(timeout)}
        events = self.masters.watch(self.path, params).__aiter__()
        pending = False
        while True:
            try:
                if pending:
                    event = await asyncio.wait_for(events.__anext__(), BURST_SECONDS)
                else:
                    event = await events.__anext__()
            except TimeoutError:
                await self.settled()
                pending = False
                continue
            except StopAsyncIteration:
                if pending:
                    await self.settled()
                return rv
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise errors.Expired(str(obj.get("message", "410 Gone")))
                raise errors.Unavailable(f"watch error: {obj.get('message', obj)}")
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
            if kind == "BOOKMARK" or not (obj.get("metadata") or {}).get("uid"):
                continue
            pending = self.apply(str(kind), obj) or pending
