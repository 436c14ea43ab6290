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

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from vnode import errors
from vnode.runtime.specs import qos_class

log = logging.getLogger(__name__)

DRIVERS = ("cgroupfs", "systemd")
_QOS_PATH = {"Guaranteed": "", "Burstable": "burstable", "BestEffort": "besteffort"}


def pod_cgroup_parent(pod: dict[str, Any], driver: str) -> str:
    """The cgroup parent of ``pod``'s sandbox under ``driver``."""
    uid = str(pod["metadata"]["uid"])
    qos = _QOS_PATH[qos_class(pod)]
    if driver == "systemd":
        parts = ["kubepods", *([qos] if qos else []), "pod" + uid.replace("-", "_")]
        return "-".join(parts) + ".slice"
    return "/" + "/".join(["kubepods", *([qos] if qos else []), "pod" + uid])


class CgroupDriver:
    """The driver in use, settled once: the configured one, or the runtime's answer."""

    def __init__(self, configured: str | None, ask_runtime: Callable[[], Awaitable[str | None]]) -> None:
        if configured is not None and configured not in DRIVERS:
            raise errors.ConfigError("runtime.cgroupDriver", f"must be one of {', '.join(DRIVERS)}")
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
