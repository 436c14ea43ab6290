"""The ``/containerLogs`` query, validated as kubelet validates PodLogOptions.

Malformed values (``tailLines=abc``, a bad ``sinceTime``) are 400 (``InvalidInput``); well-formed
but invalid ones (negative ``tailLines``, both ``sinceSeconds`` and ``sinceTime``) are 422
(``Unprocessable``), the split the API server and kubelet answer with. ``stream`` is the newer
kubelet's selector (All, Stdout, Stderr).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from vnode import errors

_TRUE = ("true", "1", "")
_FALSE = ("false", "0")
_STREAMS = {"All": None, "Stdout": "stdout", "Stderr": "stderr"}


@dataclass(frozen=True)
class LogOptions:
    follow: bool = False
    tail_lines: int | None = None
    since: datetime | None = None  # aware
    timestamps: bool = False
    limit_bytes: int | None = None
    previous: bool = False
    stream: str | None = None  # "stdout", "stderr" or None for both


def _bool(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name)
    if value is None:
        return False
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise errors.InvalidInput(f"{name}: invalid boolean value {value!r}")


def _int(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.InvalidInput(f"{name}: invalid integer value {value!r}") from None


def parse_time(value: str) -> datetime:
    """An RFC 3339 time (``Z`` or an offset, optional fraction of up to nine digits)."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    if "." in text:
        head, _, rest = text.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = head + "." + rest[: min(digits, 6)].ljust(6, "0") + rest[digits:]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise errors.InvalidInput(f"invalid RFC 3339 time {value!r}") from None
    if parsed.tzinfo is None or "T" not in text.upper():
        raise errors.InvalidInput(f"invalid RFC 3339 time {value!r}: a date, time and zone are required")
    return parsed


def parse_log_query(query: Mapping[str, str], now: datetime) -> LogOptions:
    """``LogOptions`` from the query string; see the module docstring for the error codes."""
    tail = _int(query, "tailLines")
    limit = _int(query, "limitBytes")
    since_seconds = _int(query, "sinceSeconds")
    since_time = query.get("sinceTime")
    problems = []
    if tail is not None and tail < 0:
        problems.append("tailLines: must be greater than or equal to 0")
    if limit is not None and limit < 1:
        problems.append("limitBytes: must be greater than 0")
    if since_seconds is not None and since_seconds < 1:
        problems.append("sinceSeconds: must be greater than 0")
    if since_seconds is not None and since_time:
        problems.append("at most one of `sinceTime` or `sinceSeconds` may be specified")
    stream_name = query.get("stream", "All") or "All"
    if stream_name not in _STREAMS:
        problems.append(f"stream: unsupported value {stream_name!r}: must be one of All, Stdout, Stderr")
    if problems:
        raise errors.Unprocessable("; ".join(problems))
    since = None
    if since_seconds is not None:
        since = now - timedelta(seconds=since_seconds)
    elif since_time:
        since = parse_time(since_time)
    return LogOptions(
        follow=_bool(query, "follow"),
        tail_lines=tail,
        since=since,
        timestamps=_bool(query, "timestamps"),
        limit_bytes=limit,
        previous=_bool(query, "previous"),
        stream=_STREAMS[stream_name],
    )
