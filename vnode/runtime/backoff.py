"""Kubelet's restart back-off (client-go flowcontrol.Backoff semantics), with wall-clock times.

Each key (``<pod uid>/<container name>``, or an image or sandbox key) has a delay that starts at
``initial`` and doubles on every ``next_delay`` up to ``max``. An entry not updated for ``2 * max``
has expired: the next failure starts again at ``initial``; this is how "reset after 10 minutes
running" falls out with kubelet's defaults (10 s, 300 s). Times are aware datetimes, not the
monotonic clock, because entries are persisted in the store and must mean the same thing after
vnode restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


@dataclass
class _Entry:
    delay: float
    updated: datetime


class Backoff:
    """Per-key exponential back-off; see the module docstring."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.max = maximum
        self._entries: dict[str, _Entry] = {}

    def _live(self, key: str, now: datetime) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry.updated > timedelta(seconds=2 * self.max):
            del self._entries[key]
            return None
        return entry

    def next_delay(self, key: str, now: datetime) -> float:
        """Record a failure at ``now``; returns the delay before the next attempt."""
        entry = self._live(key, now)
        if entry is None:
            entry = self._entries[key] = _Entry(self.initial, now)
        else:
            entry.delay = min(entry.delay * 2, self.max)
            entry.updated = now
        return entry.delay

    def remaining(self, key: str, since: datetime | None, now: datetime) -> float:
        """Seconds still to wait, counting the current delay from ``since`` (or the last failure)."""
        entry = self._live(key, now)
        if entry is None:
            return 0.0
        start = entry.updated if since is None else since
        return max(0.0, entry.delay - (now - start).total_seconds())

    def current_delay(self, key: str) -> float:
        entry = self._entries.get(key)
        return entry.delay if entry is not None else self.initial

    def reset(self, key: str) -> None:
        self._entries.pop(key, None)

    def forget(self, prefix: str) -> None:
        """Drop every key starting with ``prefix`` (a deleted pod's entries)."""
        for key in [k for k in self._entries if k.startswith(prefix)]:
            del self._entries[key]

    def to_state(self, key: str) -> dict[str, Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        return {"delay": entry.delay, "updated": entry.updated.isoformat()}

    def restore(self, key: str, state: dict[str, Any]) -> None:
        """Load an entry saved by ``to_state``; ignores malformed ones (they only cost a delay)."""
        try:
            self._entries[key] = _Entry(float(state["delay"]), datetime.fromisoformat(state["updated"]))
        except (KeyError, TypeError, ValueError):
            return
