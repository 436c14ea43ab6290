"""Node pressure: kubelet's eviction signals, the conditions they set, and what is done about them.

Every ``interval`` (10 s, kubelet's housekeeping) the monitor reads the same snapshot the summary
serves and compares each signal with its threshold (``vnode.kube.thresholds``):

- ``memory.available`` = memory capacity - working set -> ``MemoryPressure``
- ``nodefs.available``, ``nodefs.inodesFree``, ``imagefs.available``, ``imagefs.inodesFree``
  -> ``DiskPressure``
- ``pid.available`` = pid_max - processes -> ``PIDPressure`` (only with a threshold configured)

A condition turns True as soon as a signal is crossed and stays True until none has been for
``transition_period`` (kubelet's ``--eviction-pressure-transition-period``, 5m), so that it does
not flap. Each flip is one Node Event (``NodeHasDiskPressure``, "Node <name> status is now: ...").
Under disk pressure the monitor first frees space (``reclaim_disk``: unused images) and looks
again; under memory pressure it asks ``evict_memory`` to evict one pod per cycle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from vnode import errors
from vnode.kube.qos import qos_class
from vnode.kube.quantity import parse_quantity, to_bytes
from vnode.kube.thresholds import Threshold
from vnode.stats.collector import Snapshot, SnapshotSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kind:
    condition: str
    signals: tuple[str, ...]
    on: tuple[str, str, str]  # condition reason, condition message, event reason
    off: tuple[str, str, str]


KINDS = (
    Kind("MemoryPressure", ("memory.available",),
         ("KubeletHasInsufficientMemory", "kubelet has insufficient memory available",
          "NodeHasInsufficientMemory"),
         ("KubeletHasSufficientMemory", "kubelet has sufficient memory available",
          "NodeHasSufficientMemory")),
    Kind("DiskPressure",
         ("nodefs.available", "nodefs.inodesFree", "imagefs.available", "imagefs.inodesFree"),
         ("KubeletHasDiskPressure", "kubelet has disk pressure", "NodeHasDiskPressure"),
         ("KubeletHasNoDiskPressure", "kubelet has no disk pressure", "NodeHasNoDiskPressure")),
    Kind("PIDPressure", ("pid.available",),
         ("KubeletHasInsufficientPID", "kubelet has insufficient PID available", "NodeHasInsufficientPID"),
         ("KubeletHasSufficientPID", "kubelet has sufficient PID available", "NodeHasSufficientPID")),
)  # fmt: skip
DISK_SIGNALS = KINDS[1].signals


def observe(snapshot: Snapshot) -> dict[str, tuple[int, int]]:
    """Each signal's (available, capacity) in this snapshot; a signal without a source is absent."""
    host = snapshot.node
    out = {
        "memory.available": (host.memory_total - host.memory_working_set, host.memory_total),
        "nodefs.available": (host.rootfs.available, host.rootfs.capacity),
        "nodefs.inodesFree": (host.rootfs.inodes_free, host.rootfs.inodes),
        "pid.available": (host.pid_max - host.processes, host.pid_max),
    }
    if snapshot.imagefs is not None:
        out["imagefs.available"] = (snapshot.imagefs.available, snapshot.imagefs.capacity)
        out["imagefs.inodesFree"] = (snapshot.imagefs.inodes_free, snapshot.imagefs.inodes)
    return out


def crossed(thresholds: tuple[Threshold, ...], observed: dict[str, tuple[int, int]]) -> dict[str, str]:
    """The crossed signals, each with a line saying by how much."""
    out = {}
    for t in thresholds:
        if t.signal not in observed:
            continue
        available, capacity = observed[t.signal]
        limit = t.limit(capacity)
        if available < limit:
            out[t.signal] = f"{t.signal} is {available}, below the threshold {t.text()} ({limit})"
    return out


class PressureMonitor:
    """Owns the pressure conditions; ``conditions()`` is what the Node status reports."""

    def __init__(
        self,
        stats: SnapshotSource,
        thresholds: tuple[Threshold, ...],
        *,
        transition_period: float = 300.0,
        interval: float = 10.0,
        record_event: Callable[[str], None] = lambda reason: None,
        reclaim_disk: Callable[[], Awaitable[int]] | None = None,
        pods: Callable[[], list[dict[str, Any]]] = list,
        evict: Callable[[str, str], Awaitable[bool]] | None = None,
        soft: tuple[Threshold, ...] = (),
        soft_grace: dict[str, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stats = stats
        self.thresholds = thresholds
        self.soft = soft  # --eviction-soft: conditions at once, eviction after the signal's grace
        self.soft_grace = soft_grace or {}
        self._soft_since: dict[str, float] = {}  # since when each soft threshold has been crossed
        self.transition_period = transition_period
        self.interval = interval
        self.record_event = record_event
        self.reclaim_disk = reclaim_disk
        self.pods = pods  # the pods the node runs (their specs: QoS, requests, priority)
        self.evict = evict  # (uid, message): evict that pod
        self.clock = clock
        self._last_crossed: dict[str, float] = {}
        self._state = {kind.condition: False for kind in KINDS}
        self.signals: dict[str, str] = {}  # the crossed signals at the last check

    def conditions(self) -> list[tuple[str, bool, str, str]]:
        """(type, status, reason, message) for each pressure condition, as last decided."""
        out = []
        for kind in KINDS:
            on = self._state[kind.condition]
            reason, message, _ = kind.on if on else kind.off
            out.append((kind.condition, on, reason, message))
        return out

    def active(self, condition: str) -> bool:
        return self._state[condition]

    async def check(self) -> None:
        """One look at the signals; frees disk space or evicts a pod when they say so."""
        snapshot = await self.stats.snapshot(files=False)
        observed = observe(snapshot)
        hard, soft = crossed(self.thresholds, observed), crossed(self.soft, observed)
        if self.reclaim_disk is not None and any(s in DISK_SIGNALS for s in {**soft, **hard}):
            freed = await self.reclaim_disk()
            if freed:
                log.info("disk pressure (%s): freed %d bytes", "; ".join({**soft, **hard}.values()), freed)
                observed = observe(await self.stats.snapshot(max_age=0, files=False))
                hard, soft = crossed(self.thresholds, observed), crossed(self.soft, observed)
        signals = {**soft, **hard}
        now = self.clock()
        for signal in set(self._soft_since) - set(soft):
            del self._soft_since[signal]
        for signal in soft:
            self._soft_since.setdefault(signal, now)
        for kind in KINDS:
            hit = [signals[s] for s in kind.signals if s in signals]
            if hit:
                self._last_crossed[kind.condition] = now
            since = self._last_crossed.get(kind.condition)
            on = bool(hit) or (since is not None and now - since < self.transition_period)
            if on != self._state[kind.condition]:
                self._state[kind.condition] = on
                event_reason = (kind.on if on else kind.off)[2]
                log.warning("%s is now %s%s", kind.condition, on, f": {'; '.join(hit)}" if hit else "")
                self.record_event(event_reason)
        self.signals = signals
        threshold = self._memory_threshold_met(hard, soft, now)
        if self.evict is not None and threshold is not None:
            victim = memory_victim(snapshot, self.pods(), threshold, observed["memory.available"][0])
            if victim is not None:
                await self.evict(*victim)  # one per check, as kubelet does

    def _memory_threshold_met(
        self, hard: dict[str, str], soft: dict[str, str], now: float
    ) -> Threshold | None:
        """The memory threshold that calls for an eviction now: a hard one crossed, or a soft one
        crossed for its grace period."""
        signal = "memory.available"
        if signal in hard:
            return next(t for t in self.thresholds if t.signal == signal)
        if signal in soft and now - self._soft_since[signal] >= self.soft_grace.get(signal, 0.0):
            return next(t for t in self.soft if t.signal == signal)
        return None

    async def run(self) -> None:
        """Check every ``interval`` until cancelled; a failed check is logged and retried."""
        while True:
            try:
                await self.check()
            except errors.VnodeError as exc:
                log.warning("pressure check failed: %s", exc)
            await asyncio.sleep(self.interval)


NO_PRESSURE = [(k.condition, False, k.off[0], k.off[1]) for k in KINDS]


def allocatable(
    capacity: dict[str, str], reserved: dict[str, int], hard: tuple[Threshold, ...]
) -> dict[str, str]:
    """kubelet's allocatable: capacity - kube-reserved - system-reserved - the hard eviction
    thresholds of memory (``memory.available``) and ephemeral storage (``nodefs.available``)."""
    out = dict(capacity)
    by_signal = {t.signal: t for t in hard}
    if "cpu" in capacity:
        milli = int(parse_quantity(capacity["cpu"]) * 1000) - reserved.get("cpu", 0)
        out["cpu"] = f"{max(0, milli)}m" if milli % 1000 else str(max(0, milli) // 1000)
    for name, signal in (("memory", "memory.available"), ("ephemeral-storage", "nodefs.available")):
        if name not in capacity:
            continue
        total = int(parse_quantity(capacity[name]))
        threshold = by_signal.get(signal)
        left = total - reserved.get(name, 0) - (threshold.limit(total) if threshold else 0)
        out[name] = f"{max(0, left) // 1024}Ki"
    return out


SYSTEM_CRITICAL = 2_000_000_000  # priority of system-node-critical / system-cluster-critical pods


def _memory_request(container: dict[str, Any]) -> int:
    resources = container.get("resources") or {}
    value = (resources.get("requests") or {}).get("memory") or (resources.get("limits") or {}).get("memory")
    return to_bytes(value) if value is not None else 0


def memory_victim(
    snapshot: Snapshot, pods: list[dict[str, Any]], threshold: Threshold, available: int
) -> tuple[str, str] | None:
    """The pod to evict for memory, with kubelet's message, or None: pods using more than they
    requested first (every BestEffort pod does), then lower priority, then the most over request;
    system-critical pods are never chosen."""
    usage = {p.uid: p for p in snapshot.pods}
    ranked = []
    for pod in pods:
        uid = pod["metadata"]["uid"]
        sample = usage.get(uid)
        spec = pod.get("spec") or {}
        priority = int(spec.get("priority") or 0)
        if sample is None or priority >= SYSTEM_CRITICAL:
            continue
        containers = {c["name"]: c for c in spec.get("containers") or []}
        request = sum(_memory_request(c) for c in containers.values())
        used = sample.usage.working_set or sum(c.usage.working_set or 0 for c in sample.containers)
        over = used - request
        ranked.append(((over <= 0, priority, -over, qos_class(pod) != "BestEffort"), uid, sample, containers))
    if not ranked:
        return None
    _, uid, sample, containers = min(ranked, key=lambda r: r[0])
    quantity = threshold.text().split("<", 1)[1]
    left = f"{available // 1024}Ki"
    parts = [f"The node was low on resource: memory. Threshold quantity: {quantity}, available: {left}."]
    top = max(sample.containers, key=lambda c: c.usage.working_set or 0, default=None)
    if top is not None:
        request = _memory_request(containers.get(top.name, {}))
        parts.append(
            f"Container {top.name} was using {(top.usage.working_set or 0) // 1024}Ki, "
            f"request is {request}, has larger consumption of memory."
        )
    return uid, " ".join(parts)
