"""Wake-ups on directory changes through Linux inotify, with a poll fallback.

Two users wait for files to change: the static-pod source (a manifest added, edited, removed) and
``follow`` on a container log (new lines, rotation). Both re-read the files themselves, so the
watcher only has to say "something happened in this directory": it drains the inotify fd and
reports True. Where inotify is unavailable (the directory does not exist yet, the watch limit is
reached), ``wait`` sleeps for its timeout and reports True, and the caller's re-scan is the poll.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class DirectoryWatcher:
    """Reports changes in one directory; create it inside a running event loop."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._fd = -1
        self._watching = False
        self._open()

    def _open(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            log.debug("inotify unavailable (%s); polling %s", os.strerror(ctypes.get_errno()), self.path)
            return
        if _libc.inotify_add_watch(fd, os.fsencode(self.path), MASK) < 0:
            log.debug("cannot watch %s (%s); polling it", self.path, os.strerror(ctypes.get_errno()))
            os.close(fd)
            return
        self._fd = fd
        self._loop.add_reader(fd, self._readable)
        self._watching = True

    def _readable(self) -> None:
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass
        except OSError:
            self._close_fd()
        self._changed.set()

    @property
    def watching(self) -> bool:
        """False while the watcher is polling (no inotify watch in place)."""
        return self._watching

    async def wait(self, timeout: float) -> bool:
        """True if the directory changed since the last call (or while polling), False on timeout."""
        if not self._watching:
            await asyncio.sleep(timeout)
            if self.path.is_dir():
                self._open()  # the directory appeared: watch it from now on
            return True
        if self._changed.is_set():
            self._changed.clear()
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return False
        self._changed.clear()
        return True

    def _close_fd(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        self._watching = False

    def close(self) -> None:
        self._close_fd()
