"""Samples the runtime and the host into one ``Snapshot``: what every stats consumer reads.

Per container: CRI ``ListContainerStats`` (cumulative CPU, memory working set, writable layer).
Per pod: CRI ``ListPodSandboxStats`` (the pod cgroup, its network and processes) where it works;
when it fails (containerd fails the whole call for one sandbox without a usable cgroup) or leaves a
pod out, the pod's CPU and memory are the sum of its containers'. CPU rates (``usageNanoCores``) are
computed here from consecutive cumulative samples, as kubelet does, rather than trusting the
runtime's own. One sample serves every request younger than ``max_age``, so concurrent scrapes
cost one round of CRI calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from vnode import errors
from vnode.runtime import labels
from vnode.runtime.cri import CriClient
from vnode.stats import host

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Usage:
    """CPU and memory at one instant; None where the source had no value."""

    time_ns: int
    cpu_ns: int | None = None
    nano_cores: int | None = None
    working_set: int | None = None
    usage: int | None = None
    rss: int | None = None
    page_faults: int | None = None
    major_page_faults: int | None = None


@dataclass(frozen=True)
class ContainerSample:
    name: str
    id: str
    start_time: float  # seconds since the epoch (the container's creation, as kubelet reports it)
    usage: Usage
    rootfs_used: int | None = None
    rootfs_inodes_used: int | None = None
    logs_used: int | None = None
    logs_inodes_used: int | None = None


@dataclass(frozen=True)
class VolumeSample:
    """A volume the node made for the pod (emptyDir, configMap, secret, projected ...)."""

    name: str
    used: int
    inodes_used: int
    fs: host.FsReading  # the filesystem it lives on (a tmpfs for a memory emptyDir)


@dataclass(frozen=True)
class PodSample:
    namespace: str
    name: str
    uid: str
    start_time: float
    containers: list[ContainerSample]
    usage: Usage
    network: host.NetReading | None = None
    process_count: int | None = None
    from_sandbox: bool = False  # the pod's numbers are its cgroup's, not the sum of its containers
    volumes: list[VolumeSample] = field(default_factory=list)


@dataclass(frozen=True)
class Snapshot:
    time_ns: int
    node: host.HostSample
    node_usage: Usage
    imagefs: host.FsReading | None
    pods: list[PodSample]
    logs_fs: host.FsReading | None = None
    errors: list[str] = field(default_factory=list)  # what could not be read this time
    files: bool = True  # logs and volumes were measured (walking them costs; CPU and memory do not)


class SnapshotSource(Protocol):
    """What reads stats: the collector, or a stand-in in tests."""

    async def snapshot(self, max_age: float | None = None, *, files: bool = True) -> Snapshot: ...


def _value(msg: Any, name: str) -> int | None:
    """A CRI ``UInt64Value`` field, None when unset."""
    return int(getattr(msg, name).value) if msg.HasField(name) else None


class RateTracker:
    """usageNanoCores from consecutive cumulative CPU samples, per key."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}

    def rate(self, key: str, cpu_ns: int | None, time_ns: int) -> int | None:
        if cpu_ns is None:
            return None
        previous = self._last.get(key)
        if previous is None or time_ns > previous[1]:
            self._last[key] = (cpu_ns, time_ns)
        if previous is None or time_ns <= previous[1] or cpu_ns < previous[0]:
            return None  # first sample, same instant, or a restarted counter
        return (cpu_ns - previous[0]) * 1_000_000_000 // (time_ns - previous[1])

    def keep_only(self, keys: set[str]) -> None:
        """Forget what is gone (containers, pods), so the table does not grow forever."""
        for key in set(self._last) - keys:
            del self._last[key]


def _usage(cpu: Any, memory: Any, fallback_ns: int) -> tuple[int, int | None, dict[str, int | None]]:
    cpu_ns = _value(cpu, "usage_core_nano_seconds") if cpu is not None else None
    when = int(cpu.timestamp) if cpu is not None and cpu.timestamp else fallback_ns
    mem: dict[str, int | None] = {}
    if memory is not None:
        mem = {
            "working_set": _value(memory, "working_set_bytes"),
            "usage": _value(memory, "usage_bytes"),
            "rss": _value(memory, "rss_bytes"),
            "page_faults": _value(memory, "page_faults"),
            "major_page_faults": _value(memory, "major_page_faults"),
        }
    return when, cpu_ns, mem


class StatsCollector:
    """Owns the rate table and the last snapshot; ``snapshot()`` is the only way in."""

    def __init__(
        self,
        cri: CriClient,
        node_name: str,
        root_dir: Path,
        logs_dir: Path,
        *,
        max_age: float = 1.0,
        read_host: Callable[[Path], host.HostSample] = host.read_host,
    ) -> None:
        self.cri = cri
        self.node_name = node_name
        self.root_dir = root_dir
        self.logs_dir = logs_dir
        self.max_age = max_age
        self.read_host = read_host
        self._rates = RateTracker()
        self._last: Snapshot | None = None
        self._taken = 0.0
        self._lock = asyncio.Lock()
        self.sandbox_stats_error: str | None = None  # why pods are summed, if they are

    async def snapshot(self, max_age: float | None = None, *, files: bool = True) -> Snapshot:
        """A sample no older than ``max_age`` (default: the collector's); ``files=False`` when the
        caller needs no log or volume usage (``/metrics/resource``, the pressure monitor)."""
        limit = self.max_age if max_age is None else max_age
        async with self._lock:
            last = self._last
            if last is not None and time.monotonic() - self._taken <= limit and (last.files or not files):
                return last
            self._last = await self._sample(files)
            self._taken = time.monotonic()
            return self._last

    async def _sample(self, files: bool) -> Snapshot:
        problems: list[str] = []
        selector = {labels.NODE_LABEL: self.node_name}
        node_sample = asyncio.create_task(asyncio.to_thread(self.read_host, self.root_dir))
        try:
            try:
                pods = await self._pods(selector, files)
            except errors.VnodeError as exc:
                problems.append(f"containers: {exc}")
                pods = []
            imagefs = await self._imagefs(problems)
            node = await node_sample
        finally:
            node_sample.cancel()  # a no-op once it is done; never left running after a failure
        node_usage = Usage(
            time_ns=node.time_ns,
            cpu_ns=node.cpu_ns,
            nano_cores=self._rates.rate("node", node.cpu_ns, node.time_ns),
            working_set=node.memory_working_set,
            usage=node.memory_usage,
            rss=node.memory_rss,
            page_faults=node.page_faults,
            major_page_faults=node.major_page_faults,
        )
        logs_fs = None
        if files:  # the filesystem of the pod logs (the root one until the dir exists)
            exists = self.logs_dir.exists()
            logs_fs = await asyncio.to_thread(host.statfs, self.logs_dir) if exists else node.rootfs
        keys = {"node"} | {f"pod/{p.uid}" for p in pods} | {c.id for p in pods for c in p.containers}
        self._rates.keep_only(keys)
        return Snapshot(time.time_ns(), node, node_usage, imagefs, pods, logs_fs, problems, files)

    async def _imagefs(self, problems: list[str]) -> host.FsReading | None:
        try:
            filesystems = await self.cri.image_fs_info()
        except errors.VnodeError as exc:
            problems.append(f"ImageFsInfo: {exc}")
            return None
        for fs in filesystems:
            mount = Path(fs.fs_id.mountpoint)
            try:
                disk = await asyncio.to_thread(host.statfs, mount)
            except OSError as exc:
                problems.append(f"image filesystem {mount}: {exc}")
                continue
            used = _value(fs, "used_bytes")
            return host.FsReading(
                capacity=disk.capacity,
                available=disk.available,
                used=used if used is not None else disk.used,
                inodes=disk.inodes,
                inodes_free=disk.inodes_free,
            )
        return None

    async def _pods(self, selector: dict[str, str], files: bool) -> list[PodSample]:
        containers, sandboxes = await asyncio.gather(
            self.cri.list_containers(selector), self.cri.list_pod_sandboxes(selector)
        )
        try:
            listed = await self.cri.list_pod_sandbox_stats(selector)
            pod_stats = {s.attributes.metadata.uid: s for s in listed}
            self.sandbox_stats_error = None
        except errors.VnodeError as exc:
            if self.sandbox_stats_error != str(exc):
                log.info("pod stats are the sums of their containers: %s", exc)
            self.sandbox_stats_error = str(exc)
            pod_stats = {}
        # the sandbox stats carry their containers' (one call for both); otherwise ask for those
        stats = [c for s in pod_stats.values() if s.HasField("linux") for c in s.linux.containers]
        if {c.attributes.id for c in stats} < {c.id for c in containers if c.state == 1}:
            stats = await self.cri.list_container_stats(selector)
        running = {c.id: c for c in containers if c.state == 1}  # CONTAINER_RUNNING
        by_id = {s.attributes.id: s for s in stats}
        now = time.time_ns()
        grouped: dict[str, list[ContainerSample]] = {}
        for cid, container in running.items():
            stat = by_id.get(cid)
            uid = container.labels.get(labels.POD_UID, "")
            if stat is None or not uid:
                continue
            when, cpu_ns, mem = _usage(
                stat.cpu if stat.HasField("cpu") else None,
                stat.memory if stat.HasField("memory") else None,
                now,
            )
            layer = stat.writable_layer if stat.HasField("writable_layer") else None
            grouped.setdefault(uid, []).append(
                ContainerSample(
                    name=container.metadata.name,
                    id=cid,
                    start_time=container.created_at / 1e9,
                    usage=Usage(when, cpu_ns, self._rates.rate(cid, cpu_ns, when), **mem),
                    rootfs_used=_value(layer, "used_bytes") if layer is not None else None,
                    rootfs_inodes_used=_value(layer, "inodes_used") if layer is not None else None,
                )
            )
        pods = []
        seen: set[str] = set()
        for sandbox in sorted(sandboxes, key=lambda s: -s.created_at):
            uid = sandbox.metadata.uid
            if uid in seen or sandbox.state != 0:  # SANDBOX_READY; the newest sandbox of a pod
                continue
            seen.add(uid)
            members = sorted(grouped.get(uid, []), key=lambda c: c.name)
            pods.append(self._pod(sandbox, members, pod_stats.get(uid), now))
        if files:
            pods = await asyncio.to_thread(self._with_files, pods)
        return pods

    def _pod(self, sandbox: Any, members: list[ContainerSample], stat: Any, now: int) -> PodSample:
        meta = sandbox.metadata
        key = f"pod/{meta.uid}"
        linux = stat.linux if stat is not None and stat.HasField("linux") else None
        network = process_count = None
        if linux is not None and linux.HasField("cpu") and linux.HasField("memory"):
            when, cpu_ns, mem = _usage(linux.cpu, linux.memory, now)
            usage = Usage(when, cpu_ns, self._rates.rate(key, cpu_ns, when), **mem)
            from_sandbox = True
        else:
            usage = _sum(members, now)
            usage = replace(usage, nano_cores=self._rates.rate(key, usage.cpu_ns, usage.time_ns))
            from_sandbox = False
        if linux is not None and linux.HasField("network") and linux.network.HasField("default_interface"):
            net = linux.network.default_interface
            network = host.NetReading(net.name, net.rx_bytes.value, net.rx_errors.value,
                                      net.tx_bytes.value, net.tx_errors.value)  # fmt: skip
        if linux is not None and linux.HasField("process"):
            process_count = _value(linux.process, "process_count")
        return PodSample(
            namespace=meta.namespace,
            name=meta.name,
            uid=meta.uid,
            start_time=sandbox.created_at / 1e9,
            containers=members,
            usage=usage,
            network=network,
            process_count=process_count,
            from_sandbox=from_sandbox,
        )

    def _with_files(self, pods: list[PodSample]) -> list[PodSample]:
        """Container log usage under ``<logs dir>/<ns>_<name>_<uid>/<container>``, and the pod's
        volumes under ``<root>/pods/<uid>/volumes/<plugin>/<name>`` (blocking)."""
        out = []
        for pod in pods:
            pod_dir = self.logs_dir / f"{pod.namespace}_{pod.name}_{pod.uid}"
            containers = []
            for c in pod.containers:
                used, inodes = host.dir_usage(pod_dir / c.name)
                containers.append(replace(c, logs_used=used, logs_inodes_used=inodes))
            out.append(replace(pod, containers=containers, volumes=self._volumes(pod.uid)))
        return out

    def _volumes(self, uid: str) -> list[VolumeSample]:
        volumes = []
        try:
            plugins = sorted((self.root_dir / "pods" / uid / "volumes").iterdir())
        except OSError:
            return []
        for plugin in plugins:
            try:
                entries = sorted(p for p in plugin.iterdir() if p.is_dir())
            except OSError:
                continue
            for path in entries:
                try:
                    fs = host.statfs(path)
                except OSError:
                    continue
                used, inodes = host.dir_usage(path)
                volumes.append(VolumeSample(path.name, used, inodes, fs))
        return volumes


def _sum(members: list[ContainerSample], now: int) -> Usage:
    """A pod's usage as the sum of its containers' (each field only if every container has it)."""

    def total(name: str) -> int | None:
        values = [getattr(c.usage, name) for c in members]
        return sum(values) if values and None not in values else None

    when = max((c.usage.time_ns for c in members), default=now)
    return Usage(
        time_ns=when,
        cpu_ns=total("cpu_ns"),
        working_set=total("working_set"),
        usage=total("usage"),
        rss=total("rss"),
        page_faults=total("page_faults"),
        major_page_faults=total("major_page_faults"),
    )
