"""The ``/containerLogs`` query, decoded and validated as kubelet's getContainerLogs does.

kubelet decodes the query into a v1 PodLogOptions (a value that does not decode is a 400) and then
runs ``ValidatePodLogOptions`` (a failure is a 422). The same split here: malformed values
(``tailLines=abc``, a bad ``sinceTime``, ``follow=maybe``) raise ``InvalidInput``; well-formed but
invalid ones (negative ``tailLines``, both ``sinceSeconds`` and ``sinceTime``) raise
``Unprocessable`` with the API's wording, so clients see the messages they know.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from vnode import errors

_TRUE = ("true", "1", "")
_FALSE = ("false", "0")
# v1.LogStream values; None reads both streams.
_STREAMS: dict[str, str | None] = {"All": None, "Stdout": "stdout", "Stderr": "stderr"}
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})",
    re.ASCII,
)


@dataclass(frozen=True)
class LogOptions:
    """What to read from a container log; ``since`` is an aware datetime."""

    follow: bool = False
    tail_lines: int | None = None
    since: datetime | None = None
    timestamps: bool = False
    limit_bytes: int | None = None
    previous: bool = False
    stream: str | None = None  # "stdout", "stderr", or None for both


def parse_rfc3339(text: str) -> tuple[datetime, int]:
    """An RFC 3339 time as (aware datetime, nanoseconds within the second).

    The datetime keeps the written offset and is truncated to microseconds; the separate
    nanoseconds let log timestamps be printed back exactly. Raises ``InvalidInput``.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise errors.InvalidInput(f"invalid RFC 3339 time {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7) or "", match.group(8)
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    if zone == "Z":
        tz: timezone = UTC
    else:
        sign = -1 if zone[0] == "-" else 1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            raise errors.InvalidInput(f"invalid RFC 3339 time {text!r}: bad offset")
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        parsed = datetime(year, month, day, hour, minute, second, nanos // 1000, tzinfo=tz)
    except ValueError as exc:
        raise errors.InvalidInput(f"invalid RFC 3339 time {text!r}: {exc}") from None
    return parsed, nanos


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
        number = int(value, 10)
    except ValueError:
        raise errors.InvalidInput(f"{name}: invalid integer value {value!r}") from None
    if not -(1 << 63) <= number < 1 << 63:  # kubelet decodes an int64: anything else doesn't decode
        raise errors.InvalidInput(f"{name}: invalid integer value {value!r}")
    return number


def parse_log_query(query: Mapping[str, str], now: datetime) -> LogOptions:
    """``LogOptions`` from the query string; ``now`` anchors ``sinceSeconds``."""
    query = dict(query)
    # kubelet's backwards compatibility: ``tail`` is ``tailLines``, and ``tail=all`` means no limit.
    if tail_alias := query.get("tail"):
        if tail_alias == "all":
            query.pop("tailLines", None)
        else:
            query["tailLines"] = tail_alias
    # Decoding first (400), as kubelet does before it validates (422).
    follow = _bool(query, "follow")
    timestamps = _bool(query, "timestamps")
    previous = _bool(query, "previous")
    tail = _int(query, "tailLines")
    limit = _int(query, "limitBytes")
    since_seconds = _int(query, "sinceSeconds")
    since_text = query.get("sinceTime") or None
    since_time = parse_rfc3339(since_text)[0] if since_text is not None else None
    stream_name = query.get("stream") or None

    problems: list[str] = []
    if tail is not None and tail < 0:
        problems.append(f"tailLines: Invalid value: {tail}: must be greater than or equal to 0")
    if limit is not None and limit < 1:
        problems.append(f"limitBytes: Invalid value: {limit}: must be greater than 0")
    if since_seconds is not None and since_time is not None:
        problems.append("Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified")
    elif since_seconds is not None and since_seconds < 1:
        problems.append(f"sinceSeconds: Invalid value: {since_seconds}: must be greater than 0")
    if stream_name is not None:
        if stream_name not in _STREAMS:
            problems.append(
                f'stream: Unsupported value: "{stream_name}": supported values: "All", "Stderr", "Stdout"'
            )
        elif stream_name != "All" and tail is not None:
            problems.append("Forbidden: `tailLines` and specific `stream` are mutually exclusive for now")
    if problems:
        raise errors.Unprocessable("; ".join(problems))

    # capped at ~300 years: further back is the same (every line), and timedelta would overflow
    since = now - timedelta(seconds=min(since_seconds, 10**10)) if since_seconds is not None else since_time
    return LogOptions(
        follow=follow,
        tail_lines=tail,
        since=since,
        timestamps=timestamps,
        limit_bytes=limit,
        previous=previous,
        stream=_STREAMS[stream_name or "All"],
    )
