"""Posts the node's Events to the API server, rate-limited and aggregated like kubelet's recorder.

Events arrive from the ``EventLog`` (which also logs them) and never block the caller: they go to
a bounded queue, and past its size the oldest are dropped and counted. One task posts them.
Repeats of the same (object, type, reason, message) within ``AGGREGATE_SECONDS`` become a PATCH of
the existing Event's ``count`` and ``lastTimestamp`` instead of a new object, as client-go's
EventCorrelator does; a token bucket per object (burst ``BURST``, one token per ``REFILL_SECONDS``)
keeps a crash-looping pod from flooding the API.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from vnode import errors
from vnode.app.events import RecordedEvent
from vnode.clients.masters import Masters

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


class EventPoster:
    """See the module docstring; ``record`` is the EventLog listener, ``run`` the posting task."""

    def __init__(self, masters: Masters, node_name: str) -> None:
        self.masters = masters
        self.node_name = node_name
        self._queue: deque[RecordedEvent] = deque()
        self._wake = asyncio.Event()
        self._posted: dict[tuple[str, str, str, str], _Posted] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # uid -> (tokens, last refill)
        self.dropped = 0
        self.limited = 0
        self.posts = 0

    def record(self, event: RecordedEvent) -> None:
        if len(self._queue) >= QUEUE_SIZE:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)
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
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                event = self._queue[0]
                try:
                    await self._post(event)
                except errors.Unavailable as exc:
                    log.debug("events not posted yet: %s", exc)
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                except errors.VnodeError as exc:
                    log.warning(
                        "event %s for %s/%s dropped: %s", event.reason, event.namespace, event.name, exc
                    )
                self._queue.popleft()

    async def _post(self, event: RecordedEvent) -> None:
        now = time.monotonic()
        key = (event.uid, event.type, event.reason, event.message)
        stamp = event.time.strftime("%Y-%m-%dT%H:%M:%SZ")
        previous = self._posted.get(key)
        if previous is not None and now - previous.at < AGGREGATE_SECONDS:
            previous.count += 1
            previous.at = now
            patch = {"count": previous.count, "lastTimestamp": stamp}
            try:
                await self.masters.request(
                    "PATCH",
                    f"/api/v1/namespaces/{previous.namespace}/events/{previous.name}",
                    body=patch,
                    content_type="application/merge-patch+json",
                )
                self.posts += 1
                return
            except errors.NotFound:
                pass  # expired in the API: post it anew
        if not self._allow(event.uid, now):
            self.limited += 1
            return
        name = f"{event.name}.{secrets.token_hex(8)}"
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": event.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": event.kind,
                **({"namespace": event.namespace} if event.kind == "Pod" else {}),
                "name": event.name,
                "uid": event.uid,
            },
            "reason": event.reason,
            "message": event.message,
            "type": event.type,
            "source": {"component": "kubelet", "host": self.node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node_name,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self.masters.request("POST", f"/api/v1/namespaces/{event.namespace}/events", body=body)
        self._posted[key] = _Posted(event.namespace, name, 1, now)
        self.posts += 1
        if len(self._posted) > 4 * QUEUE_SIZE:  # forget the oldest aggregation keys
            for old in sorted(self._posted, key=lambda k: self._posted[k].at)[:QUEUE_SIZE]:
                del self._posted[old]
