"""The container log formats kubelet reads: CRI's (containerd) and docker's json-file.

CRI: ``<RFC3339Nano time> <stdout|stderr> <P|F> <content>\\n``, where P marks a fragment of a line
longer than the runtime's buffer and F the fragment that ends it. The joiner turns fragments back
into whole lines per stream, keeping the first fragment's time, which is what kubelet prints with
``timestamps=true``. The raw time text is kept for printing, so nanoseconds survive (Python's
datetime, used for ``since`` comparisons, only has microseconds).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime

from vnode import errors
from vnode.logs.options import parse_time

log = logging.getLogger(__name__)

STREAMS = (b"stdout", b"stderr")


@dataclass(frozen=True)
class LogEntry:
    """One log line: its time (parsed and as written), its stream, and its bytes with the newline."""

    time: datetime
    time_text: str
    stream: str
    content: bytes


def parse_line(line: bytes) -> tuple[LogEntry, bool]:
    """One raw line as (entry, partial); ``InvalidInput`` if it is neither CRI nor docker JSON."""
    if line.startswith(b"{"):
        return _parse_json(line), False
    parts = line.split(b" ", 3)
    if len(parts) < 3 or parts[1] not in STREAMS:
        raise errors.InvalidInput(f"not a CRI log line: {line[:80]!r}")
    time_text = parts[0].decode("ascii", errors="replace")
    tag = parts[2].rstrip(b"\n")
    content = parts[3] if len(parts) == 4 else b""
    partial = tag.split(b":", 1)[0] == b"P"
    if tag.split(b":", 1)[0] not in (b"P", b"F"):
        raise errors.InvalidInput(f"not a CRI log line (tag {tag!r}): {line[:80]!r}")
    if partial:
        content = content.removesuffix(b"\n")
    elif not content.endswith(b"\n"):
        content += b"\n"
    entry = LogEntry(parse_time(time_text), time_text, parts[1].decode(), content)
    return entry, partial


def _parse_json(line: bytes) -> LogEntry:
    try:
        record = json.loads(line)
        text = str(record["time"])
        return LogEntry(parse_time(text), text, str(record["stream"]), str(record["log"]).encode())
    except (ValueError, KeyError, TypeError) as exc:
        raise errors.InvalidInput(f"not a docker JSON log line: {line[:80]!r}") from exc


class PartialJoiner:
    """Joins P fragments with their F per stream; ``feed`` returns a whole entry or None."""

    def __init__(self) -> None:
        self._pending: dict[str, LogEntry] = {}

    def feed(self, line: bytes) -> LogEntry | None:
        try:
            entry, partial = parse_line(line)
        except errors.InvalidInput as exc:
            log.debug("skipping a malformed log line: %s", exc)
            return None
        first = self._pending.pop(entry.stream, None)
        if first is not None:
            entry = LogEntry(first.time, first.time_text, entry.stream, first.content + entry.content)
        if partial:
            self._pending[entry.stream] = entry
            return None
        return entry
