"""The event recorder: Events go to the log, to a bounded in-memory ring, and to listeners.

With no control plane there is nowhere to post Events, but they are still what tells an operator
why a pod is not running, so each one is logged with its object and the last ones are kept (newest
last; for the local API of the offline issue). With a control plane, the event poster
(``vnode.controllers.events``) is a listener and posts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from vnode.errors import StoreError
from vnode.store import Delete, Op, Put, Store
from vnode.store.layout import EVENTLOG

log = logging.getLogger("vnode.events")


@dataclass(frozen=True)
class RecordedEvent:
    time: datetime
    namespace: str
    name: str
    uid: str
    type: str
    reason: str
    message: str
    kind: str = "Pod"


def v1_event(
    event: RecordedEvent, node_name: str, name: str, *, count: int = 1, first: RecordedEvent | None = None
) -> dict[str, Any]:
    """The v1 Event of ``count`` occurrences of ``event`` (the last; ``first`` the earliest), as
    kubelet's recorder writes it."""
    return {
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
        "source": {"component": "kubelet", "host": node_name},
        "reportingComponent": "kubelet",
        "reportingInstance": node_name,
        "firstTimestamp": (first or event).time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lastTimestamp": event.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "count": count,
    }


class EventLog:
    """An ``EventSink`` that logs and remembers the last ``capacity`` events, in the store too when
    given one (``run`` writes them), so the local API shows them after a restart."""

    def __init__(self, capacity: int = 1000, store: Store | None = None) -> None:
        self.capacity = capacity
        self.events: deque[RecordedEvent] = deque(maxlen=capacity)
        self._listeners: list[Callable[[RecordedEvent], None]] = []
        self.store = store
        self._next = 0
        self._unsaved: list[tuple[int, RecordedEvent]] = []
        self._dirty = asyncio.Event()
        if store is not None:
            for key, row in store.items(EVENTLOG):
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    self.events.append(RecordedEvent(**{**row, "time": datetime.fromisoformat(row["time"])}))
                    self._next = int(key) + 1

    async def run(self) -> None:
        """Write new events to the store (batched), and drop the ones past ``capacity``."""
        assert self.store is not None
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            batch, self._unsaved = self._unsaved, []
            ops: list[Op] = [
                Put(EVENTLOG, f"{seq:012d}", {**asdict(e), "time": e.time.isoformat()}) for seq, e in batch
            ]
            oldest = self._next - self.capacity  # the keys this batch pushed out of the window
            ops += [Delete(EVENTLOG, f"{seq:012d}") for seq in range(max(0, oldest - len(batch)), oldest)]
            try:
                await self.store.write(ops)
            except StoreError as exc:
                log.warning("events not kept in the store: %s", exc)

    def v1_events(self, node_name: str) -> list[dict[str, Any]]:
        """The remembered events as v1 Events, repeats of one (object, type, reason, message)
        counted in one, as the API server would hold them; oldest first."""
        groups: dict[tuple[str, str, str, str], list[RecordedEvent]] = {}
        for e in self.events:
            groups.setdefault((e.uid or e.name, e.type, e.reason, e.message), []).append(e)
        out = []
        for key, seen in groups.items():
            digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:16]
            out.append(
                v1_event(seen[-1], node_name, f"{seen[-1].name}.{digest}", count=len(seen), first=seen[0])
            )
        return sorted(out, key=lambda e: (e["lastTimestamp"], e["metadata"]["name"]))

    def add_listener(self, callback: Callable[[RecordedEvent], None]) -> None:
        """``callback(event)`` for every event recorded from now on (the API poster)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[RecordedEvent], None]) -> None:
        self._listeners.remove(callback)

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        """``callback()`` after each new event until the returned function is called."""

        def heard(event: RecordedEvent) -> None:
            callback()

        self.add_listener(heard)
        return lambda: self.remove_listener(heard)

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        recorded = RecordedEvent(
            time=datetime.now(tz=UTC),
            namespace=str(meta.get("namespace", "default")),
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            type=type_,
            reason=reason,
            message=message,
            kind=str(obj.get("kind") or "Pod"),
        )
        self.events.append(recorded)
        if self.store is not None:
            self._unsaved.append((self._next, recorded))
            self._dirty.set()
        self._next += 1
        level = logging.WARNING if type_ == "Warning" else logging.INFO
        what = f"{recorded.kind.lower()}/{recorded.namespace}/{recorded.name}"
        log.log(level, "%s %s %s: %s", type_, what, reason, message)
        for callback in self._listeners:
            callback(recorded)
