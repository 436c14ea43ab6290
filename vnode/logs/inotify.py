"""Wake-ups on directory changes through Linux inotify, with a poll fallback.

Two users wait for files to change: the static-pod source (a manifest added, edited, removed) and
``follow`` on a container log (new lines, rotation). Both re-read the files themselves, so the
watcher only has to say "something happened here": it drains the inotify fd and reports True.
Where inotify is unavailable (no libc symbol, the instance or watch limit reached, the directory
not there yet or removed), ``wait`` sleeps for its timeout and reports True, so the caller's
re-scan becomes the poll; the watch is retried on every such wait.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import struct
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
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
MASK = (
    IN_CREATE
    | IN_DELETE
    | IN_MODIFY
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CLOSE_WRITE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ATTRIB
)
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
_READ_SIZE = 64 * 1024


class _Libc:
    """The two inotify calls, bound once; ``None`` where libc does not have them."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(None, use_errno=True)  # the process's own symbols include libc's
        self.init1 = lib.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.init1.restype = ctypes.c_int
        self.add_watch = lib.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int


_libc: _Libc | None = None
_libc_loaded = False


def _get_libc() -> _Libc | None:
    global _libc, _libc_loaded
    if not _libc_loaded:
        _libc_loaded = True
        try:
            _libc = _Libc()
        except (OSError, AttributeError) as exc:
            log.debug("inotify is not available (%s); watchers will poll", exc)
    return _libc


class DirectoryWatcher:
    """Reports changes in one directory (a file's directory when given a file).

    Create it inside a running event loop: the inotify fd is read by the loop (``add_reader``).
    """

    def __init__(self, path: Path) -> None:
        path = Path(path)
        # A single file (a static pod manifest given as a file): its directory sees its rewrites.
        self.path = path.parent if path.exists() and not path.is_dir() else path
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._fd = -1
        self._closed = False
        self._open()

    @property
    def watching(self) -> bool:
        """False while the watcher is polling (no inotify watch in place)."""
        return self._fd >= 0

    def _open(self) -> None:
        libc = _get_libc()
        if libc is None or not self.path.is_dir():
            return
        fd = libc.init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            log.debug("inotify_init1 failed (%s); polling %s", os.strerror(ctypes.get_errno()), self.path)
            return
        if libc.add_watch(fd, os.fsencode(self.path), MASK) < 0:
            log.debug("cannot watch %s (%s); polling it", self.path, os.strerror(ctypes.get_errno()))
            os.close(fd)
            return
        self._fd = fd
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        """Drain every queued event; a removed watch (directory gone) falls back to polling."""
        lost = False
        while self._fd >= 0:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                log.debug("reading inotify events for %s failed (%s); polling", self.path, exc)
                lost = True
                break
            if not data:
                break
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, name_len = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + name_len
                if mask & IN_IGNORED:
                    lost = True
                if mask & IN_Q_OVERFLOW:
                    log.debug("inotify queue overflowed for %s; the caller re-scans anyway", self.path)
        if lost:
            self._close_fd()
        self._changed.set()

    async def wait(self, timeout: float) -> bool:
        """True if the directory changed since the last call (always, while polling); False on timeout."""
        if self._closed:
            raise RuntimeError("DirectoryWatcher is closed")
        if not self.watching:
            await asyncio.sleep(timeout)
            self._changed.clear()
            self._open()  # the directory may have appeared: watch it from now on
            return True
        if not self._changed.is_set():
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

    def close(self) -> None:
        """Release the inotify fd; safe to call more than once."""
        self._closed = True
        self._close_fd()
