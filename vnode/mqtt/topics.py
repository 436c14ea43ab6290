"""Topic names, topic filters and matching (MQTT 3.1.1 section 4.7).

A filter's levels are split once, when it is subscribed; a name's levels once per publish.
Filters without wildcards sit in a dict (one lookup per publish); only wildcard filters are
walked. Filters starting with ``+`` or ``#`` never match a name starting with ``$``
(MQTT-4.7.2-1): ``$SYS`` and KubeEdge's ``$hw``/``$ke`` topics reach only filters that name them.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
M = TypeVar("M")

log = logging.getLogger(__name__)


class BadTopic(ValueError):
    """A topic name or filter the specification forbids."""


def check_name(topic: str) -> None:
    """A PUBLISH topic name: not empty, no wildcards (MQTT-4.7.3-1, 3.3.2-2)."""
    if not topic:
        raise BadTopic("empty topic name")
    if "+" in topic or "#" in topic:
        raise BadTopic(f"wildcard in topic name {topic!r}")


def check_filter(topic_filter: str) -> list[str]:
    """A SUBSCRIBE filter's levels, or ``BadTopic`` (MQTT-4.7.1-2, -3, 4.7.3-1)."""
    if not topic_filter:
        raise BadTopic("empty topic filter")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise BadTopic(f"'#' must be a whole last level in {topic_filter!r}")
        if "+" in level and level != "+":
            raise BadTopic(f"'+' must be a whole level in {topic_filter!r}")
    return levels


def has_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


def matches(topic_filter: str | list[str], topic: str | list[str]) -> bool:
    """Whether a (valid) filter matches a topic name."""
    f = topic_filter.split("/") if isinstance(topic_filter, str) else topic_filter
    t = topic.split("/") if isinstance(topic, str) else topic
    if t[0].startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True  # also matches the parent level: "a/#" matches "a" (4.7.1.2)
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)


class FilterIndex(Generic[K]):
    """Who subscribed with which filter: ``{filter: {key: value}}``, searched by topic name."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[K, int]] = {}
        self._wild: dict[str, tuple[list[str], dict[K, int]]] = {}

    def add(self, topic_filter: str, key: K, qos: int) -> None:
        if has_wildcard(topic_filter):
            entry = self._wild.get(topic_filter)
            if entry is None:
                entry = self._wild[topic_filter] = (check_filter(topic_filter), {})
            entry[1][key] = qos
        else:
            self._exact.setdefault(topic_filter, {})[key] = qos

    def remove(self, topic_filter: str, key: K) -> None:
        if has_wildcard(topic_filter):
            entry = self._wild.get(topic_filter)
            if entry is not None:
                entry[1].pop(key, None)
                if not entry[1]:
                    del self._wild[topic_filter]
        else:
            holders = self._exact.get(topic_filter)
            if holders is not None:
                holders.pop(key, None)
                if not holders:
                    del self._exact[topic_filter]

    def match(self, topic: str) -> Iterator[tuple[K, int]]:
        """Every (key, qos) whose filter matches ``topic``; a key may come more than once."""
        exact = self._exact.get(topic)
        if exact:
            yield from exact.items()
        if self._wild:
            levels = topic.split("/")
            for f, holders in self._wild.values():
                if matches(f, levels):
                    yield from holders.items()

    def __len__(self) -> int:
        return sum(len(h) for h in self._exact.values()) + sum(len(h) for _, h in self._wild.values())


class Listeners(Generic[M]):
    """In-process callbacks by topic filter (the broker's hooks, the external client's): a
    callback that raises is logged and costs only itself."""

    def __init__(self) -> None:
        self._index: FilterIndex[int] = FilterIndex()
        self._calls: dict[int, Callable[[M], None]] = {}
        self._ids = itertools.count(1)

    def add(self, topic_filter: str, callback: Callable[[M], None]) -> Callable[[], None]:
        """Register ``callback``; returns the function that removes it."""
        key = next(self._ids)
        self._calls[key] = callback
        self._index.add(topic_filter, key, 1)

        def remove() -> None:
            self._index.remove(topic_filter, key)
            self._calls.pop(key, None)

        return remove

    def deliver(self, topic: str, message: M) -> None:
        for key, _ in list(self._index.match(topic)):
            callback = self._calls.get(key)
            if callback is not None:
                try:
                    callback(message)
                except Exception:
                    log.exception("mqtt: an in-process listener failed on %s", topic)
