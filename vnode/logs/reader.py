"""Reads a container's log file as kubelet's ReadLogs does: tail, since, stream, limit, follow.

The file is read in blocks on a worker thread (``asyncio.to_thread``), so a large log never
blocks the event loop; ``tailLines`` seeks backwards from the end instead of reading it all.
``follow`` waits on an inotify watch of the log's directory (``DirectoryWatcher``), reopens the
path when the runtime rotates the file, and ends once the container is no longer running and the
file has nothing more to give.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

from vnode import errors
from vnode.logs.cri import LogEntry, PartialJoiner
from vnode.logs.inotify import DirectoryWatcher
from vnode.logs.options import LogOptions
from vnode.provider.protocols import LogTarget

BLOCK = 64 * 1024


def tail_offset(f: BinaryIO, lines: int) -> int:
    """The offset where the last ``lines`` complete lines of ``f`` start (searching backwards)."""
    end = f.seek(0, os.SEEK_END)
    if lines == 0:
        return end
    pos = end
    newlines = 0
    # A final newline ends the last line; it does not start another one.
    f.seek(max(0, end - 1))
    skip_last = f.read(1) == b"\n"
    while pos > 0:
        start = max(0, pos - BLOCK)
        f.seek(start)
        block = f.read(pos - start)
        idx = len(block)
        while True:
            idx = block.rfind(b"\n", 0, idx)
            if idx < 0:
                break
            if skip_last and start + idx == end - 1:
                skip_last = False
                continue
            newlines += 1
            if newlines == lines:
                return start + idx + 1
        pos = start
    return 0


class _Cursor:
    """An open log file and the bytes read from it that do not yet form a complete line."""

    def __init__(self, path: Path, offset: int | None, tail: int | None) -> None:
        self.path = path
        try:
            self.file: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise errors.NotFound(f"log file {path} does not exist") from None
        except OSError as exc:
            raise errors.RuntimeFailure(f"cannot open log file {path}: {exc}") from exc
        self.inode = os.fstat(self.file.fileno()).st_ino
        if tail is not None:
            self.file.seek(tail_offset(self.file, tail))
        elif offset:
            self.file.seek(offset)
        self.rest = b""

    def read_lines(self) -> list[bytes]:
        """Complete lines appended since the last call (blocking; run on a thread)."""
        lines: list[bytes] = []
        while True:
            block = self.file.read(BLOCK)
            if not block:
                return lines
            data = self.rest + block
            cut = data.rfind(b"\n") + 1
            self.rest = data[cut:]
            if cut:
                lines.extend(data[:cut].splitlines(keepends=True))
            if len(lines) > 4096:
                return lines

    def rotated(self) -> bool:
        """True if the path now names another file, or this one was truncated."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # removed but not yet replaced: keep reading what we have
        return st.st_ino != self.inode or st.st_size < self.file.tell()

    def close(self) -> None:
        self.file.close()


def format_entry(entry: LogEntry, options: LogOptions) -> bytes:
    if options.timestamps:
        return entry.time_text.encode() + b" " + entry.content
    return entry.content


async def read_log(
    target: LogTarget,
    options: LogOptions,
    write: Callable[[bytes], Awaitable[None]],
    *,
    poll_interval: float = 1.0,
) -> None:
    """Write the log of ``target`` to ``write``; see the module docstring."""
    path = Path(target.path)
    cursor = await asyncio.to_thread(_Cursor, path, None, options.tail_lines)
    joiner = PartialJoiner()
    budget = options.limit_bytes
    watcher: DirectoryWatcher | None = None

    async def emit(lines: list[bytes]) -> bool:
        """Write the selected entries of ``lines``; True once ``limitBytes`` is used up."""
        nonlocal budget
        out = []
        for line in lines:
            entry = joiner.feed(line)
            if entry is None:
                continue
            if options.stream is not None and entry.stream != options.stream:
                continue
            if options.since is not None and entry.time < options.since:
                continue
            out.append(format_entry(entry, options))
        if not out:
            return False
        data = b"".join(out)
        if budget is not None:
            data = data[:budget]
            budget -= len(data)
        await write(data)
        return budget is not None and budget <= 0

    try:
        while True:
            lines = await asyncio.to_thread(cursor.read_lines)
            if lines:
                if await emit(lines):
                    return
                continue  # more may be buffered: read until EOF before waiting
            if not options.follow:
                return
            if watcher is None:
                watcher = DirectoryWatcher(path.parent)
            if await asyncio.to_thread(cursor.rotated):
                cursor.close()
                cursor = await asyncio.to_thread(_Cursor, path, 0, None)
                continue
            if await watcher.wait(poll_interval) or await target.is_running():
                continue
            # The container ended: one last read for lines written just before it did.
            lines = await asyncio.to_thread(cursor.read_lines)
            if not lines or await emit(lines):
                return
    finally:
        cursor.close()
        if watcher is not None:
            watcher.close()
