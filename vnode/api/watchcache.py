"""The local API's pods with resourceVersions, the last changes, and the watchers that follow them.

``resourceVersion`` is a per-process counter that grows by one per pod change; it restarts with
vnode, so a watch resuming from a version this process did not hand out (or one older than the
last ``HISTORY`` changes) is told 410 Expired and re-lists, as against an API server after
compaction.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from vnode.kube.selectors import Filter
from vnode.provider.protocols import LogLocator, PodLister

HISTORY = 256  # pod changes kept for watches that resume from a resourceVersion
WATCH_QUEUE = 1024  # events a slow watcher may lag behind before its stream is closed


class LocalPods(PodLister, LogLocator, Protocol):
    """What the local API needs of the pod manager: pods, their logs, and change notifications."""

    def add_listener(self, callback: Callable[[str], None]) -> None: ...

    def listed_pod(self, uid: str) -> dict[str, Any] | None:
        """The pod as ``list_pods`` shows it, or None when it is not listed (gone or deleting)."""
        ...


@dataclass
class Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    previous: dict[str, Any] | None  # the object before (MODIFIED), to tell filters what changed


class _Watcher:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(WATCH_QUEUE)
        self.closed = False

    def put(self, event: Event | None) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.closed = True  # too far behind: end the stream; the client re-watches (or re-lists)


class PodHistory:
    """The pods as served (with resourceVersions), the last ``HISTORY`` changes, and the watchers.

    ``sync`` diffs ``list_pods()`` against what was served before every list, and ``sync_one``
    diffs the one pod a listener call names (a full diff per status change made starting N pods
    cost O(N^2)), so a list's resourceVersion and the events after it always agree.
    """

    def __init__(self, pods: LocalPods, keep: int = HISTORY) -> None:
        self.pods = pods
        self.rv = 0
        self._raw: dict[str, dict[str, Any]] = {}  # uid -> the pod as listed (deep copy)
        self._served: dict[str, dict[str, Any]] = {}  # uid -> the pod with kind and resourceVersion
        self._events: deque[Event] = deque(maxlen=keep)
        self._watchers: set[_Watcher] = set()
        pods.add_listener(self.sync_one)

    def sync_one(self, uid: str) -> None:
        pod = self.pods.listed_pod(uid)
        if pod is None:
            if uid in self._served:
                del self._raw[uid]
                self._emit("DELETED", uid, self._served.pop(uid), None)
            return
        if self._raw.get(uid) == pod:
            return
        previous = self._served.get(uid)
        raw = self._raw[uid] = copy.deepcopy(pod)
        self._emit("ADDED" if previous is None else "MODIFIED", uid, raw, previous)

    def sync(self) -> None:
        current = {p["metadata"]["uid"]: p for p in self.pods.list_pods()}
        for uid in [u for u in self._served if u not in current]:
            del self._raw[uid]
            self._emit("DELETED", uid, self._served.pop(uid), None)
        for uid, pod in current.items():
            if self._raw.get(uid) == pod:
                continue
            previous = self._served.get(uid)
            raw = self._raw[uid] = copy.deepcopy(pod)  # never mutated: served objects share its parts
            self._emit("ADDED" if previous is None else "MODIFIED", uid, raw, previous)

    def _emit(self, type_: str, uid: str, pod: dict[str, Any], previous: dict[str, Any] | None) -> None:
        self.rv += 1
        meta = {**pod.get("metadata", {}), "resourceVersion": str(self.rv)}
        obj = {**pod, "kind": "Pod", "apiVersion": "v1", "metadata": meta}
        if type_ != "DELETED":
            self._served[uid] = obj
        event = Event(self.rv, type_, obj, previous)
        self._events.append(event)
        for watcher in self._watchers:
            watcher.put(event)

    def snapshot(self) -> tuple[list[dict[str, Any]], int]:
        self.sync()
        items = sorted(
            self._served.values(), key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"]["name"])
        )
        return items, self.rv

    def since(self, rv: int) -> list[Event] | None:
        """The changes after ``rv``, or None when they are not all known (410 Expired)."""
        first = self._events[0].rv if self._events else self.rv + 1
        if rv > self.rv or rv < first - 1:
            return None
        return [e for e in self._events if e.rv > rv]

    def subscribe(self) -> _Watcher:
        watcher = _Watcher()
        self._watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: _Watcher) -> None:
        self._watchers.discard(watcher)

    def close(self) -> None:
        """End every watch stream (the listener is closing)."""
        for watcher in self._watchers:
            watcher.closed = True
            watcher.put(None)


def filtered(event: Event, wanted: Filter) -> tuple[str, dict[str, Any]] | None:
    """The event a filtered watch sees: an object leaving the filter is DELETED, one entering ADDED."""
    now = wanted.wants(event.obj)
    before = event.previous is not None and wanted.wants(event.previous)
    if event.type == "MODIFIED" and now != before:
        return ("ADDED", event.obj) if now else ("DELETED", event.obj)
    return (event.type, event.obj) if now else None
