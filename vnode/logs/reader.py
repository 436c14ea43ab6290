"""Reads a container's log file as kubelet's ReadLogs does: tail, since, stream, limit, follow.

File work runs on a worker thread (``asyncio.to_thread``) in bounded batches, so a large log
never blocks the event loop nor fills memory; ``tailLines`` walks the file backwards from the end
instead of reading it all. ``follow`` waits on an inotify watch of the log's directory
(``DirectoryWatcher``), reopens the path when the file is rotated (another inode) or truncated,
and ends once the container is no longer running and the file has nothing more to give. Not
following, a read ends where the file ended when it was opened (what kubelet's tail gives).

Differences from kubelet, on purpose: ``tailLines`` counts whole lines (P fragments joined), so
``tailLines=1`` never prints the tail end of a long line; fragments are joined per stream before
printing, so ``timestamps`` and ``stream`` apply to whole lines.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from vnode import errors
from vnode.logs.cri import (
    PARTIAL,
    ContentJoiner,
    LogEntry,
    PartialJoiner,
    format_timestamp,
    parse_line,
    split_lines,
)
from vnode.logs.inotify import DirectoryWatcher
from vnode.logs.options import LogOptions
from vnode.provider.protocols import LogTarget

BLOCK = 64 * 1024
BATCH = 1024 * 1024  # bytes read per thread hop before lines are handed to the writer


def _lines_backwards(f: BinaryIO, end: int) -> Iterator[tuple[int, bytes]]:
    """The newline-terminated lines of ``f`` before ``end``, last first, with their offsets.

    Bytes after the last newline (a line still being written) are not a line yet and are skipped.
    """
    pos = end
    pieces: list[bytes] = []  # the current line's bytes found so far, rightmost first
    seen_end = False
    while pos > 0:
        start = max(0, pos - BLOCK)
        f.seek(start)
        block = f.read(pos - start)
        pos = start
        right = search = len(block)  # the current line ends at ``right`` in this block
        while (i := block.rfind(b"\n", 0, search)) >= 0:
            if seen_end:
                pieces.append(block[i + 1 : right])
                yield pos + i + 1, b"".join(reversed(pieces))
                pieces = []
            seen_end = True
            right, search = i + 1, i  # this newline ends the line to its left
        if seen_end:
            pieces.append(block[:right])
    if seen_end and any(pieces):
        yield 0, b"".join(reversed(pieces))


def _is_partial(line: bytes) -> bool:
    try:
        return parse_line(line)[2] == PARTIAL
    except errors.InvalidInput:
        return False


def tail_offset(f: BinaryIO, lines: int, end: int | None = None) -> int:
    """Where the last ``lines`` whole lines of ``f`` before ``end`` (default: its size) start;
    P fragments count with their line."""
    if end is None:
        end = f.seek(0, os.SEEK_END)
    start: int | None = None
    found = 0
    for offset, line in _lines_backwards(f, end):
        partial = _is_partial(line)
        if lines == 0:
            # Start after the last complete line: only what is still being written follows.
            return offset + len(line)
        if found < lines:
            if not partial:
                found += 1
            start = offset
        elif partial:
            start = offset  # a fragment of the earliest line we keep: take it whole
        else:
            break
    # Fewer lines than asked for (or none complete yet): the whole file.
    return start if start is not None and found >= lines else 0


class _Cursor:
    """An open log file, and the bytes read from it that do not form a complete line yet.

    ``bounded``: read only what the file held when it was opened. Not following, a reader must
    not go on into lines written while it reads: ``tailLines=3`` would print four (the tail was
    located before them), and ``limitBytes``/``sinceTime`` would answer a moving question.
    """

    def __init__(self, path: Path, tail: int | None, *, bounded: bool = False) -> None:
        self.path = path
        try:
            self.file: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise errors.NotFound(f"log file {path} does not exist") from None
        except OSError as exc:
            raise errors.RuntimeFailure(f"cannot open log file {path}: {exc}") from exc
        try:
            st = os.fstat(self.file.fileno())
            self.inode = st.st_ino
            start = tail_offset(self.file, tail, st.st_size) if tail is not None else 0
            self.file.seek(start)
        except BaseException:
            self.file.close()
            raise
        self.left: int | None = st.st_size - start if bounded else None  # bytes still to read
        self.rest = b""

    def read_chunk(self) -> bytes:
        """The complete lines appended since the last call, up to about ``BATCH`` bytes (blocking)."""
        pieces: list[bytes] = []
        size = 0
        while size < BATCH:
            block = self.file.read(BLOCK if self.left is None else min(BLOCK, self.left))
            if not block:
                break
            size += len(block)
            if self.left is not None:
                self.left -= len(block)
            cut = block.rfind(b"\n") + 1
            if cut:
                pieces.append(self.rest)
                pieces.append(block[:cut])
                self.rest = block[cut:]
            else:
                self.rest += block
        return b"".join(pieces)

    def take_rest(self) -> bytes:
        """The incomplete last line, for a reader that is not waiting for it to be finished."""
        rest, self.rest = self.rest, b""
        return rest

    def rotated(self) -> bool:
        """True if the path now names another file, or this one was truncated (blocking)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # removed and not replaced yet: what is open is all there is for now
        return st.st_ino != self.inode or st.st_size < self.file.tell()

    def close(self) -> None:
        self.file.close()


def _open(path: Path, tail: int | None, bounded: bool = False) -> _Cursor:
    return _Cursor(path, tail, bounded=bounded)


class _Printer:
    """Filters and formats entries, and enforces ``limitBytes``."""

    def __init__(self, options: LogOptions, write: Callable[[bytes], Awaitable[None]]) -> None:
        self.options = options
        self.write = write
        self.joiner = PartialJoiner()
        # Without since or timestamps no line's time is needed: the cheaper joiner will do.
        self.contents = ContentJoiner() if options.since is None and not options.timestamps else None
        self.budget = options.limit_bytes

    def _format(self, entry: LogEntry) -> bytes | None:
        options = self.options
        if options.stream is not None and entry.stream != options.stream:
            return None
        if options.since is not None and entry.time < options.since:
            return None
        if options.timestamps:
            return format_timestamp(entry.time, entry.nanosecond).encode() + b" " + entry.content
        return entry.content

    async def emit(self, chunk: bytes) -> bool:
        """Write the selected entries of the lines in ``chunk``; True once ``limitBytes`` is used up."""
        out: list[bytes] = []
        if self.contents is not None:
            out = self.contents.feed_chunk(chunk, self.options.stream)
        else:
            for line in split_lines(chunk):
                entry = self.joiner.feed(line)
                if entry is not None and (data := self._format(entry)) is not None:
                    out.append(data)
        if not out:
            return False
        data = b"".join(out)
        if self.budget is not None:
            data = data[: self.budget]
            self.budget -= len(data)
        await self.write(data)
        return self.budget is not None and self.budget <= 0


async def read_log(
    target: LogTarget,
    options: LogOptions,
    write: Callable[[bytes], Awaitable[None]],
    *,
    poll_interval: float = 1.0,
) -> None:
    """Write the log at ``target.path`` to ``write`` as ``options`` select; ``NotFound`` if absent.

    With ``follow`` it returns once ``target.is_running()`` is False and the file is drained, or
    when ``limitBytes`` is reached; cancel the task to stop earlier (the client went away).
    """
    path = Path(target.path)
    cursor = await asyncio.to_thread(_open, path, options.tail_lines, not options.follow)
    printer = _Printer(options, write)
    watcher: DirectoryWatcher | None = None
    stopping = False
    try:
        if options.tail_lines == 0 and not options.follow:
            return
        while True:
            chunk = await asyncio.to_thread(cursor.read_chunk)
            if chunk:
                if await printer.emit(chunk):
                    return
                continue  # read on to EOF before waiting
            if not options.follow:
                # An unfinished last line is printed as kubelet does, except after tailLines,
                # which counts complete lines: there it is a line being written, not a line.
                rest = cursor.take_rest()
                if rest and options.tail_lines is None:
                    await printer.emit(rest)
                return
            if await asyncio.to_thread(cursor.rotated):
                # The old file is drained (EOF above); its unfinished line will never be finished.
                try:
                    fresh = await asyncio.to_thread(_open, path, None)
                except errors.NotFound:
                    pass  # replaced and then removed in between: keep waiting on what we have
                else:
                    cursor.close()
                    cursor = fresh
                    continue
            if stopping:
                return  # the container had stopped and everything it wrote is out
            if watcher is None:
                watcher = DirectoryWatcher(path.parent)
                continue  # re-read once: lines written before the watch existed raised no event
            if await watcher.wait(poll_interval):
                continue
            # Quiet for a whole interval: only now ask the runtime whether more can come.
            if not await target.is_running():
                stopping = True  # one last drain for lines written just before it stopped
    finally:
        cursor.close()
        if watcher is not None:
            watcher.close()
