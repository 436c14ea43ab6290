"""Pod cgroups: the ``cgroup_parent`` every sandbox gets, per QoS class, as kubelet lays them out.

containerd builds a sandbox's stats (``ListPodSandboxStats``) from the cgroup named by the
sandbox's ``linux.cgroup_parent``; without one a single sandbox fails the whole call. kubelet's
layout, one cgroup per pod under its QoS class:

- cgroupfs: ``/kubepods/pod<uid>``, ``/kubepods/burstable/pod<uid>``, ``/kubepods/besteffort/pod<uid>``
- systemd: ``kubepods-pod<uid>.slice``, ``kubepods-burstable-pod<uid>.slice``,
  ``kubepods-besteffort-pod<uid>.slice`` (dashes of the uid become underscores; systemd nests the
  slices by their dashes)

The driver must be the one the runtime uses (runc refuses a slice name under cgroupfs and a path
under systemd): ``--cgroup-driver`` when given, else what the runtime says (CRI ``RuntimeConfig``,
containerd 2.0 and later), else ``cgroupfs``, kubelet's and containerd 1.x's default.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from vnode import errors
from vnode.config.settings import CGROUP_DRIVERS
from vnode.kube.qos import qos_class

log = logging.getLogger(__name__)

_QOS_PATH = {"Guaranteed": "", "Burstable": "burstable", "BestEffort": "besteffort"}


def pod_cgroup_parent(pod: dict[str, Any], driver: str) -> str:
    """The cgroup parent of ``pod``'s sandbox under ``driver``."""
    uid = str(pod["metadata"]["uid"])
    qos = _QOS_PATH[qos_class(pod)]
    if driver == "systemd":
        parts = ["kubepods", *([qos] if qos else []), "pod" + uid.replace("-", "_")]
        return "-".join(parts) + ".slice"
    return "/" + "/".join(["kubepods", *([qos] if qos else []), "pod" + uid])


def cgroup_mounts(mountinfo: str) -> list[Path]:
    """The mount points of the cgroup hierarchies (v1 controllers and the v2 unified one)."""
    points = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fstype = right.split(" ", 1)[0]
        fields = left.split()
        if fstype in ("cgroup", "cgroup2") and len(fields) > 4:
            points.append(Path(fields[4].replace("\\040", " ")))
    return points


def remove_pod_cgroups(uid: str) -> list[Path]:
    """Remove the pod's cgroupfs directories (every QoS class, every hierarchy) once its
    containers are gone, as kubelet does: a cgroup outlives its processes, and with it its
    counters, which a pod of the same uid (a static pod's is its manifest's hash) would inherit.
    Blocking; a directory that is still busy or absent is left. Returns the ones removed."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return []
    removed = []
    for mount in cgroup_mounts(text):
        for qos in ("", "burstable", "besteffort"):
            path = mount / "kubepods" / qos / f"pod{uid}" if qos else mount / "kubepods" / f"pod{uid}"
            try:
                path.rmdir()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.debug("pod cgroup %s not removed: %s", path, exc)
                continue
            removed.append(path)
    return removed


class CgroupDriver:
    """The driver in use, settled once: the configured one, or the runtime's answer."""

    def __init__(self, configured: str | None, ask_runtime: Callable[[], Awaitable[str | None]]) -> None:
        if configured is not None and configured not in CGROUP_DRIVERS:
            raise errors.ConfigError("runtime.cgroupDriver", f"must be one of {', '.join(CGROUP_DRIVERS)}")
        self._driver = configured
        self._ask = ask_runtime

    async def get(self) -> str:
        """The driver; asks the runtime the first time (an unreachable runtime is asked again)."""
        if self._driver is not None:
            return self._driver
        try:
            said = await self._ask()
        except errors.Unavailable:
            return "cgroupfs"  # nothing runs without the runtime; ask again next time
        self._driver = said or "cgroupfs"
        log.info("cgroup driver: %s (%s)", self._driver, "from the runtime" if said else "default")
        return self._driver

    async def remove(self, uid: str) -> None:
        """Remove the pod's cgroup after its sandboxes (cgroupfs; under systemd the slice is the
        service manager's, and stays)."""
        if await self.get() == "cgroupfs":
            await asyncio.to_thread(remove_pod_cgroups, uid)
