"""Posts the node's Events to the API server, rate-limited and aggregated like kubelet's recorder.

Events arrive from the ``EventLog`` (which also logs them) and never block the caller: they go to
a bounded queue, and past its size the oldest are dropped and counted. One task posts them.
Repeats of the same (object, type, reason, message) within ``AGGREGATE_SECONDS`` become a PATCH of
the existing Event's ``count`` and ``lastTimestamp`` instead of a new object, as client-go's
EventCorrelator does; a token bucket per object (burst ``BURST``, one token per ``REFILL_SECONDS``)
keeps a crash-looping pod from flooding the API.

While no master answers, the queue is also kept in the store (table ``events``, with the dropped
count), so the Events of an outage survive a restart of vnode and are posted when the link
returns; each is deleted from the store once posted. Online, nothing is written: an Event posted
at once never touches the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime

from vnode import errors
from vnode.clients.masters import Masters
from vnode.controllers.eventlog import RecordedEvent, v1_event
from vnode.store import Delete, Op, Put, Store
from vnode.store.layout import EVENTS, EVENTS_DROPPED

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
AGGREGATE_SECONDS = 600.0
BURST = 25
REFILL_SECONDS = 300.0 / BURST  # client-go's spam filter: 25 burst, refilled over 5 minutes
RETRY_SECONDS = 5.0


@dataclass
class _Posted:
    namespace: str
    name: str
    count: int
    at: float


def _key(event: RecordedEvent) -> tuple[str, str, str, str]:
    """What makes two events the same Event in the API (its count grows instead)."""
    return event.uid, event.type, event.reason, event.message


class EventPoster:
    """See the module docstring; ``record`` is the EventLog listener, ``run`` the posting task."""

    def __init__(self, masters: Masters, node_name: str, store: Store | None = None) -> None:
        self.masters = masters
        self.node_name = node_name
        self.store = store
        self._queue: deque[tuple[int, RecordedEvent]] = deque()
        self._wake = asyncio.Event()
        self._posted: dict[tuple[str, str, str, str], _Posted] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # uid -> (tokens, last refill)
        self._stored: set[int] = set()  # queued events that are in the store
        self._forget: set[int] = set()  # stored events posted or dropped: delete them
        self._next = 0
        self.dropped = 0
        self.limited = 0
        self.posts = 0
        self.offline = False
        self._load()

    def _load(self) -> None:
        """The events an earlier run kept while offline, oldest first."""
        if self.store is None:
            return
        for key, row in self.store.items(EVENTS):
            if key == EVENTS_DROPPED:
                self.dropped = int(row)
                continue
            seq = int(key)
            self._queue.append((seq, RecordedEvent(**{**row, "time": datetime.fromisoformat(row["time"])})))
            self._stored.add(seq)
            self._next = seq + 1
        if self._queue:
            log.info("%d event(s) kept from before the restart wait to be posted", len(self._queue))
            self._wake.set()

    @property
    def backlog(self) -> int:
        """Events waiting to be posted (``vnode_events_backlog``)."""
        return len(self._queue)

    def record(self, event: RecordedEvent) -> None:
        if len(self._queue) >= QUEUE_SIZE:
            seq, _ = self._queue.popleft()
            if seq in self._stored:
                self._forget.add(seq)
            self.dropped += 1
        self._queue.append((self._next, event))
        self._next += 1
        self._wake.set()

    def _allow(self, uid: str, now: float) -> bool:
        tokens, last = self._buckets.get(uid, (float(BURST), now))
        tokens = min(float(BURST), tokens + (now - last) / REFILL_SECONDS)
        if tokens < 1:
            self._buckets[uid] = (tokens, now)
            return False
        self._buckets[uid] = (tokens - 1, now)
        return True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_try = 0.0
        while True:
            due = max(0.0, next_try - loop.time()) if self._queue else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), due)
            self._wake.clear()
            if self.offline:
                await self._keep()  # what arrived meanwhile
            if loop.time() < next_try:
                continue
            if await self._drain():
                self.offline = False
            else:
                self.offline = True
                await self._keep()
                next_try = loop.time() + RETRY_SECONDS

    async def _drain(self) -> bool:
        """Post the queue in order; False when no master answers (the rest stays queued).

        Repeats of one Event waiting together (a crash loop during an outage) are posted once,
        with their count and the last one's time: a backlog costs a write per distinct Event."""
        try:
            while self._queue:
                _, event = self._queue[0]
                repeats = [(seq, e) for seq, e in self._queue if _key(e) == _key(event)]
                try:
                    await self._post(repeats[-1][1], len(repeats), first=event)
                except errors.Unavailable as exc:
                    log.debug("events not posted yet: %s", exc)
                    return False
                except errors.VnodeError as exc:
                    log.warning(
                        "event %s for %s/%s dropped: %s", event.reason, event.namespace, event.name, exc
                    )
                done = {seq for seq, _ in repeats}
                self._queue = deque(item for item in self._queue if item[0] not in done)
                self._forget |= done & self._stored
            return True
        finally:
            await self._keep(new=False)

    async def _keep(self, *, new: bool = True) -> None:
        """Bring the store up to date: add the queued events it lacks (``new``), delete the ones
        posted or dropped. One transaction; a store that fails only costs the offline copy."""
        if self.store is None:
            return
        ops: list[Op] = [Delete(EVENTS, f"{seq:012d}") for seq in self._forget]
        added = [(seq, e) for seq, e in self._queue if seq not in self._stored] if new else []
        ops += [Put(EVENTS, f"{seq:012d}", {**asdict(e), "time": e.time.isoformat()}) for seq, e in added]
        if added or self._forget:
            ops.append(Put(EVENTS, EVENTS_DROPPED, self.dropped))
        if not ops:
            return
        try:
            await self.store.write(ops)
        except errors.StoreError as exc:
            log.warning("events not kept for after a restart: %s", exc)
            return
        self._stored = (self._stored - self._forget) | {seq for seq, _ in added}
        self._forget.clear()

    async def _post(
        self, event: RecordedEvent, count: int = 1, *, first: RecordedEvent | None = None
    ) -> None:
        """``count`` occurrences of ``event`` (the last of them; ``first`` the earliest)."""
        now = time.monotonic()
        key = _key(event)
        stamp = event.time.strftime("%Y-%m-%dT%H:%M:%SZ")
        previous = self._posted.get(key)
        if previous is not None and now - previous.at < AGGREGATE_SECONDS:
            previous.count += count
            previous.at = now
            patch = {"count": previous.count, "lastTimestamp": stamp}
            try:
                await self.masters.request(
                    "PATCH",
                    f"/api/v1/namespaces/{previous.namespace}/events/{previous.name}",
                    body=patch,
                    content_type="application/merge-patch+json",
                    answer=False,
                )
                self.posts += 1
                return
            except errors.NotFound:
                pass  # expired in the API: post it anew
        if not self._allow(event.uid, now):
            self.limited += 1
            return
        name = f"{event.name}.{secrets.token_hex(8)}"
        body = v1_event(event, self.node_name, name, count=count, first=first)
        await self.masters.request(
            "POST", f"/api/v1/namespaces/{event.namespace}/events", body=body, answer=False
        )
        self._posted[key] = _Posted(event.namespace, name, count, now)
        self.posts += 1
        if len(self._posted) > 4 * QUEUE_SIZE:  # forget the oldest aggregation keys
            for old in sorted(self._posted, key=lambda k: self._posted[k].at)[:QUEUE_SIZE]:
                del self._posted[old]
