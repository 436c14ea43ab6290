"""The container log formats kubelet reads: CRI's (containerd) and docker's json-file.

CRI: ``<RFC3339Nano time> <stdout|stderr> <P|F> <content>\\n``. The runtime splits a line longer
than its buffer into P (partial) fragments ended by an F (full) one; ``PartialJoiner`` turns them
back into whole lines per stream, keeping the first fragment's time. Like kubelet, a line is tried
as CRI first and then as docker JSON (``{"log": ..., "stream": ..., "time": ...}``), and a line
that is neither is skipped (logged at debug): one bad line must not end a log stream.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime

from vnode import errors
from vnode.logs.options import parse_rfc3339

log = logging.getLogger(__name__)

STREAMS = ("stdout", "stderr")
PARTIAL = "P"
FULL = "F"
# Print log times with all nine fraction digits, as kubelet does (its timeFormatOut is
# RFC3339NanoFixed); False gives Go's trimmed RFC3339Nano.
FIXED_WIDTH = True
_STREAMS = (b"stdout", b"stderr")
PIECE = 32 * 1024  # bytes of a log stripped in one substitution (see ContentJoiner.feed_chunk)
_TIME = (
    rb"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,9})?"
    rb"(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)"
)
_TIME_SHAPE = re.compile(_TIME)
# After a newline: the prefix of a plain full line, and the start of any other line. The two
# are exact complements, so a stretch without the second is all plain lines.
_PLAIN_PREFIX = re.compile(rb"\n" + _TIME + rb" (?:stdout|stderr) F ")
_OTHER_LINE = re.compile(rb"\n(?!" + _TIME + rb" (?:stdout|stderr) F )")


@dataclass
class LogEntry:
    """One whole log line: when, which stream, and its bytes (newline included when written)."""

    time: datetime
    stream: str
    content: bytes
    # The time's fraction of a second in nanoseconds; datetime keeps microseconds only.
    nanosecond: int = 0


def _parse(line: bytes) -> tuple[datetime, int, str, str, bytes]:
    """(time, nanoseconds, stream, tag, content) of a CRI or docker JSON line."""
    try:
        return _parse_cri(line)
    except errors.InvalidInput:
        if not line.lstrip().startswith(b"{"):
            raise
    return _parse_json(line)


def _parse_cri(line: bytes) -> tuple[datetime, int, str, str, bytes]:
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        raise errors.InvalidInput(f"not a CRI log line: {line[:80]!r}")
    try:
        time, nanos = parse_rfc3339(parts[0].decode("ascii"))
    except UnicodeDecodeError:
        raise errors.InvalidInput(f"not a CRI log line (timestamp): {line[:80]!r}") from None
    stream = parts[1].decode("ascii", errors="replace")
    if stream not in STREAMS:
        raise errors.InvalidInput(f"not a CRI log line (stream {stream!r}): {line[:80]!r}")
    tag_field = parts[2]
    content = parts[3] if len(parts) == 4 else b""
    if len(parts) == 3:  # "<time> <stream> F\n": an empty line written without the last space
        tag_field, content = tag_field.rstrip(b"\n"), tag_field[len(tag_field.rstrip(b"\n")) :]
    # Tags are ':'-separated for forward compatibility; only the first one says P or F, and
    # kubelet treats anything but P as a full line.
    tag = PARTIAL if tag_field.split(b":", 1)[0] == b"P" else FULL
    if tag == PARTIAL:
        content = content.removesuffix(b"\n")
    return time, nanos, stream, tag, content


def _parse_json(line: bytes) -> tuple[datetime, int, str, str, bytes]:
    try:
        record = json.loads(line)
        text, stream, content = record["time"], record["stream"], record["log"]
    except (ValueError, KeyError, TypeError):
        raise errors.InvalidInput(f"not a CRI or docker JSON log line: {line[:80]!r}") from None
    if not isinstance(text, str) or not isinstance(content, str) or stream not in STREAMS:
        raise errors.InvalidInput(f"not a docker JSON log line: {line[:80]!r}")
    time, nanos = parse_rfc3339(text)
    # Docker splits long lines too, but kubelet prints each record as it is: so do we.
    return time, nanos, stream, FULL, content.encode()


def parse_line(line: bytes) -> tuple[datetime, str, str, bytes]:
    """(time, stream, tag ``P``/``F``, content) of one raw line; ``InvalidInput`` if malformed.

    A P fragment's content has no newline; an F line's keeps the one it was written with.
    """
    time, _nanos, stream, tag, content = _parse(line)
    return time, stream, tag, content


def format_timestamp(time: datetime, nanosecond: int) -> str:
    """Go's RFC3339Nano (``2006-01-02T15:04:05.999999999Z07:00``) in the zone the line was written in.

    With ``FIXED_WIDTH`` (the default, kubelet's RFC3339NanoFixed) the fraction always has nine
    digits; without it trailing zeros are trimmed (no dot for whole seconds). UTC is ``Z``.
    """
    offset = time.utcoffset()
    if offset is None or not offset:
        zone = "Z"
    else:
        minutes = int(offset.total_seconds()) // 60
        sign = "+" if minutes >= 0 else "-"
        zone = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    fraction = f"{nanosecond:09d}" if FIXED_WIDTH else f"{nanosecond:09d}".rstrip("0")
    return f"{time:%Y-%m-%dT%H:%M:%S}{'.' if fraction else ''}{fraction}{zone}"


class PartialJoiner:
    """Joins P fragments with the F that ends them, per stream, into whole ``LogEntry`` lines."""

    def __init__(self) -> None:
        self._pending: dict[str, LogEntry] = {}

    def feed(self, line: bytes) -> LogEntry | None:
        """The entry ``line`` completes, or None (a fragment kept, or a malformed line skipped)."""
        try:
            time, nanos, stream, tag, content = _parse(line)
        except errors.InvalidInput as exc:
            log.debug("skipping a malformed log line: %s", exc)
            return None
        first = self._pending.pop(stream, None)
        entry = (
            LogEntry(time, stream, content, nanos)
            if first is None
            else LogEntry(first.time, stream, first.content + content, first.nanosecond)
        )
        if tag == PARTIAL:
            self._pending[stream] = entry
            return None
        return entry


def split_lines(chunk: bytes) -> list[bytes]:
    """The lines of ``chunk``, each with its newline (the last one may have none); only ``\\n``
    ends a line, as in the runtime's writer (``bytes.splitlines`` would also split on ``\\r``)."""
    lines = [line + b"\n" for line in chunk.split(b"\n")]
    last = lines.pop()
    if len(last) > 1:
        lines.append(last[:-1])
    return lines


class ContentJoiner:
    """``PartialJoiner`` for reads that neither filter by time nor print it (the usual
    ``kubectl logs``): only the content of whole lines, without building a datetime per line,
    which is most of the cost of serving a large log. The time is checked for shape only; a line
    that is not plainly CRI (docker JSON, an empty line without its last space, anything odd)
    goes through the full parser, so what is skipped stays the same."""

    def __init__(self) -> None:
        self._pending: dict[bytes, bytes] = {}

    def feed_chunk(self, chunk: bytes, stream: str | None) -> list[bytes]:
        """``feed`` of the lines in ``chunk``. Pieces of plain full lines (with nothing pending)
        are stripped by one regex substitution, several times faster than line by line; a piece
        with any other line (a P fragment, docker JSON, junk) is redone around those lines."""
        if stream is not None:
            return self.feed(split_lines(chunk), stream)
        out: list[bytes] = []
        pos, size = 0, len(chunk)
        while pos < size:
            end = chunk.find(b"\n", pos + PIECE) + 1 or size
            piece = chunk[pos:end]
            pos = end
            if not self._pending:
                stripped, count = _PLAIN_PREFIX.subn(b"\n", b"\n" + piece)
                if count == piece.count(b"\n") + (not piece.endswith(b"\n")):
                    out.append(stripped[1:])
                    continue
            out += self._feed_mixed(piece)
        return out

    def _feed_mixed(self, chunk: bytes) -> list[bytes]:
        """Stretches of plain lines by substitution, the other lines (and every line while
        fragments are pending) one by one."""
        out: list[bytes] = []
        data = b"\n" + chunk  # data[i] is the newline before the line starting at chunk[i]
        pos, size = 0, len(chunk)
        while pos < size:
            if not self._pending:
                other = _OTHER_LINE.search(data, pos)
                stop = other.start() if other is not None else size
                if stop > pos:
                    out.append(_PLAIN_PREFIX.sub(b"\n", data[pos : stop + 1])[1:])
                    pos = stop
                if other is None:
                    break
            end = chunk.find(b"\n", pos) + 1 or size
            out += self.feed([chunk[pos:end]], None)
            pos = end
        return out

    def feed(self, lines: list[bytes], stream: str | None) -> list[bytes]:
        """The contents of the whole lines ``lines`` complete, of ``stream`` (None: both)."""
        want = stream.encode() if stream is not None else None
        pending = self._pending
        out: list[bytes] = []
        shape = _TIME_SHAPE.fullmatch
        for line in lines:
            parts = line.split(b" ", 3)
            if len(parts) == 4 and parts[1] in _STREAMS and shape(parts[0]):
                name, tag, content = parts[1], parts[2], parts[3]
                partial = tag != b"F" and (tag == b"P" or tag.startswith(b"P:"))
            else:
                try:
                    _time, _nanos, text, tag_text, content = _parse(line)
                except errors.InvalidInput as exc:
                    log.debug("skipping a malformed log line: %s", exc)
                    continue
                name, partial = text.encode(), tag_text == PARTIAL
            if partial:
                pending[name] = pending.get(name, b"") + content.removesuffix(b"\n")
                continue
            if pending:
                first = pending.pop(name, None)
                if first is not None:
                    content = first + content
            if want is None or name == want:
                out.append(content)
        return out
