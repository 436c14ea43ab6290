"""Pod volumes on the host: emptyDir (disk or tmpfs) and hostPath, laid out as kubelet lays them.

``<root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`` holds an emptyDir (a tmpfs mounted
there for ``medium: Memory``, sized by ``sizeLimit``); ``<root>/pods/<uid>/containers/<name>/``
holds the file mounted at a container's terminationMessagePath. Preparing is idempotent, so a
worker calls it on every container start and a restarted vnode finds its volumes as they were.
The manager is synchronous (it makes syscalls); workers call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from vnode import errors
from vnode.kube.quantity import to_bytes

log = logging.getLogger(__name__)

EMPTY_DIR = "kubernetes.io~empty-dir"
PLUGINS = {
    "configMap": "configmap",
    "secret": "secret",
    "projected": "projected",
    "downwardAPI": "downward-api",
}
MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2
MAX_TERMINATION_MESSAGE = 4096

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_HOST_PATH_CHECKS = {
    "Directory": (stat.S_ISDIR, "directory"),
    "File": (stat.S_ISREG, "file"),
    "Socket": (stat.S_ISSOCK, "socket"),
    "CharDevice": (stat.S_ISCHR, "character device"),
    "BlockDevice": (stat.S_ISBLK, "block device"),
}


def write_atomic(target: Path, files: dict[str, tuple[bytes, int]]) -> bool:
    """Make ``target`` show exactly ``files``, switching all of them at once (kubelet's
    AtomicWriter): the contents go to a new ``..<timestamp>`` directory, the ``..data`` symlink is
    renamed over to point at it, and each visible name is a symlink through ``..data``. A reader
    inside the container sees either the old set or the new one, never a mix. False if unchanged."""
    target.mkdir(parents=True, exist_ok=True)
    data_link = target / "..data"
    if data_link.is_symlink():
        current = target / os.readlink(data_link)
        if _same_contents(current, files):
            return False
    stamp = target / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{os.getpid()}_{time.monotonic_ns()}"
    stamp.mkdir(mode=0o755)
    for rel, (content, mode) in files.items():
        path = stamp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode & 0o777)
    old = os.readlink(data_link) if data_link.is_symlink() else None
    tmp_link = target / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    tmp_link.symlink_to(stamp.name)
    os.rename(tmp_link, data_link)
    wanted = {rel.split("/", 1)[0] for rel in files}
    for entry in target.iterdir():
        if entry.name.startswith(".."):
            continue
        if entry.name not in wanted:
            entry.unlink() if entry.is_symlink() else shutil.rmtree(entry, ignore_errors=True)
    for top in wanted:
        link = target / top
        if not link.is_symlink():
            link.symlink_to(f"..data/{top}")
    if old is not None and old != stamp.name:
        shutil.rmtree(target / old, ignore_errors=True)
    return True


def _same_contents(directory: Path, files: dict[str, tuple[bytes, int]]) -> bool:
    try:
        present = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}
        if present != set(files):
            return False
        for rel, (content, mode) in files.items():
            path = directory / rel
            if path.read_bytes() != content or (path.stat().st_mode & 0o777) != (mode & 0o777):
                return False
    except OSError:
        return False
    return True


def mount_points() -> set[str]:
    """Every mount point of this mount namespace (from /proc/self/mountinfo)."""
    points = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4:
                points.add(fields[4].encode().decode("unicode_escape"))
    return points


class VolumeManager:
    """Creates and removes the host side of pod volumes; see the module docstring."""

    def __init__(self, pods_dir: Path) -> None:
        self.pods_dir = Path(pods_dir)

    def pod_dir(self, uid: str) -> Path:
        return self.pods_dir / uid

    def prepare(
        self, pod: dict[str, Any], files: dict[str, dict[str, tuple[bytes, int]]] | None = None
    ) -> dict[str, Path]:
        """Volume name -> host path for every volume of ``pod``, creating what is missing.

        ``files`` holds the contents of configMap and secret volumes (``apiobjects.volume_files``);
        they are written with kubelet's atomic swap, and only when they changed."""
        uid = pod["metadata"]["uid"]
        result: dict[str, Path] = {}
        for volume in pod.get("spec", {}).get("volumes") or []:
            name = volume["name"]
            if files is not None and name in files:
                plugin = next(f"kubernetes.io~{p}" for k, p in PLUGINS.items() if k in volume)
                target = self.pod_dir(uid) / "volumes" / plugin / name
                write_atomic(target, files[name])
                result[name] = target
            elif "emptyDir" in volume:
                result[name] = self._empty_dir(uid, name, volume.get("emptyDir") or {})
            elif "hostPath" in volume:
                source: dict[str, Any] = volume["hostPath"] or {}
                result[name] = self._host_path(name, source)
            else:
                kind = next((k for k in volume if k != "name"), "?")
                raise errors.InvalidInput(f'volume "{name}": type {kind} is not supported by this node')
        return result

    def _empty_dir(self, uid: str, name: str, source: dict[str, Any]) -> Path:
        path = self.pod_dir(uid) / "volumes" / EMPTY_DIR / name
        path.mkdir(parents=True, exist_ok=True)
        if source.get("medium") == "Memory" and str(path) not in mount_points():
            options = "mode=0777"
            if source.get("sizeLimit") is not None:
                options += f",size={to_bytes(source['sizeLimit'])}"
            if (
                _libc.mount(b"tmpfs", str(path).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options.encode())
                != 0
            ):
                err = ctypes.get_errno()
                raise errors.RuntimeFailure(
                    f'emptyDir "{name}": mounting tmpfs at {path}: {os.strerror(err)}'
                )
        os.chmod(path, 0o777)
        return path

    def _host_path(self, name: str, source: dict[str, Any]) -> Path:
        path = Path(str(source.get("path", "")))
        kind = source.get("type", "") or ""
        if kind == "DirectoryOrCreate":
            if not path.exists():
                path.mkdir(mode=0o755, parents=True)
            kind = "Directory"
        elif kind == "FileOrCreate":
            if not path.exists():
                try:
                    path.touch(mode=0o644)
                except OSError as exc:
                    raise errors.InvalidInput(
                        f'hostPath volume "{name}": creating {path}: {exc.strerror}'
                    ) from exc
            kind = "File"
        if kind in _HOST_PATH_CHECKS:
            check, what = _HOST_PATH_CHECKS[kind]
            try:
                mode = path.stat().st_mode
            except OSError:
                raise errors.InvalidInput(f"hostPath type check failed: {path} does not exist") from None
            if not check(mode):
                raise errors.InvalidInput(f"hostPath type check failed: {path} is not a {what}")
        return path

    def termination_log_path(self, pod: dict[str, Any], container: dict[str, Any], attempt: int) -> Path:
        """An empty file for instance ``attempt`` of ``container`` to write its termination message to."""
        path: Path = self.pod_dir(pod["metadata"]["uid"]) / "containers" / container["name"] / str(attempt)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        path.chmod(0o666)
        return path

    def termination_message(self, uid: str, container: str, attempt: int) -> str:
        """What an instance wrote to its termination-log file (kubelet reads at most 4 KiB)."""
        path = self.pod_dir(uid) / "containers" / container / str(attempt)
        try:
            with path.open("rb") as f:
                return f.read(MAX_TERMINATION_MESSAGE).decode(errors="replace")
        except OSError:
            return ""

    def cleanup(self, uid: str) -> None:
        """Unmount and remove everything of pod ``uid`` (it is gone)."""
        root = self.pod_dir(uid)
        if not root.exists():
            return
        prefix = str(root) + "/"
        for point in sorted((p for p in mount_points() if p.startswith(prefix)), reverse=True):
            if _libc.umount2(point.encode(), MNT_DETACH) != 0:
                log.warning("unmounting %s: %s", point, os.strerror(ctypes.get_errno()))
        shutil.rmtree(root, ignore_errors=True)
