"""One vnode per root dir: an exclusive ``flock`` held for the life of ``vnode run``.

Two processes managing one LMDB store and one set of containers would each take the other's pods
for strays. The lock is the kernel's, on an open file: it ends with the process however that
ends (SIGKILL included), so a lock file left behind never blocks a start. The file holds the
holder's pid and start time only to name it in the refusal; read-only commands (``vnode
status``) do not take the lock.
"""

from __future__ import annotations

import fcntl
import os
from datetime import UTC, datetime
from pathlib import Path

from vnode import errors

LOCK_FILE = "vnode.lock"


class RootDirInUse(errors.VnodeError):
    """Another live vnode holds the root dir's lock (``vnode run`` exits with code 4)."""


class RootLock:
    """The held lock; ``release()`` (or process exit) lets the next vnode start."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def acquire(root_dir: Path) -> RootLock:
    """Take the root dir's lock without waiting; ``RootDirInUse`` names the holder if held."""
    root_dir.mkdir(parents=True, exist_ok=True)
    path = root_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 256, 0).decode(errors="replace").split()
        os.close(fd)
        pid, started = [*holder, "?", "?"][:2]
        raise RootDirInUse(f"root dir {root_dir} is in use by vnode pid {pid} (started {started})") from None
    except BaseException:
        os.close(fd)
        raise
    stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {stamp}\n".encode(), 0)
    return RootLock(fd)
