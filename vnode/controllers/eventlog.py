"""The event recorder: Events go to the log, to a bounded in-memory ring, and to listeners.

With no control plane there is nowhere to post Events, but they are still what tells an operator
why a pod is not running, so each one is logged with its object and the last ones are kept (newest
last; for the local API of the offline issue). With a control plane, the event poster
(``vnode.controllers.events``) is a listener and posts them.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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


class EventLog:
    """An ``EventSink`` that logs and remembers the last ``capacity`` events."""

    def __init__(self, capacity: int = 1000) -> None:
        self.events: deque[RecordedEvent] = deque(maxlen=capacity)
        self._listeners: list[Callable[[RecordedEvent], None]] = []

    def add_listener(self, callback: Callable[[RecordedEvent], None]) -> None:
        """``callback(event)`` for every event recorded from now on (the API poster)."""
        self._listeners.append(callback)

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
        level = logging.WARNING if type_ == "Warning" else logging.INFO
        what = f"{recorded.kind.lower()}/{recorded.namespace}/{recorded.name}"
        log.log(level, "%s %s %s: %s", type_, what, reason, message)
        for callback in self._listeners:
            callback(recorded)
