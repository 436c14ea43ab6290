"""kubelet's ``/stats/summary`` JSON (stats/v1alpha1 ``Summary``) from a ``Snapshot``.

Field names and nesting are kubelet's; a value the source did not have is left out rather than
reported as 0 (the Go types are pointers). ``only_cpu_and_memory`` keeps what kubelet keeps for
that query: node and pods with their names, start times, cpu and memory, and nothing else.
``systemContainers`` lists ``kubelet`` (this process) and ``pods`` (the pods together).
"""

from __future__ import annotations

import os
import resource
import time
from datetime import UTC, datetime
from typing import Any

from vnode.stats.collector import PodSample, Snapshot, Usage
from vnode.stats.host import FsReading, NetReading

_PROCESS_START = time.time()  # this module is imported at start


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ns(time_ns: int) -> str:
    return rfc3339(time_ns / 1e9)


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def cpu(usage: Usage) -> dict[str, Any]:
    return _drop_none({
        "time": _ns(usage.time_ns),
        "usageNanoCores": usage.nano_cores,
        "usageCoreNanoSeconds": usage.cpu_ns,
    })  # fmt: skip


def memory(usage: Usage, available: int | None = None) -> dict[str, Any]:
    return _drop_none({
        "time": _ns(usage.time_ns),
        "availableBytes": available,
        "usageBytes": usage.usage,
        "workingSetBytes": usage.working_set,
        "rssBytes": usage.rss,
        "pageFaults": usage.page_faults,
        "majorPageFaults": usage.major_page_faults,
    })  # fmt: skip


def fs(
    reading: FsReading | None, time_ns: int, used: int | None = None, inodes_used: int | None = None
) -> Any:
    if reading is None:
        return None
    return _drop_none({
        "time": _ns(time_ns),
        "availableBytes": reading.available,
        "capacityBytes": reading.capacity,
        "usedBytes": reading.used if used is None else used,
        "inodesFree": reading.inodes_free,
        "inodes": reading.inodes,
        "inodesUsed": reading.inodes_used if inodes_used is None else inodes_used,
    })  # fmt: skip


def network(reading: NetReading | None, time_ns: int) -> Any:
    if reading is None:
        return None
    interface = {
        "name": reading.name,
        "rxBytes": reading.rx_bytes,
        "rxErrors": reading.rx_errors,
        "txBytes": reading.tx_bytes,
        "txErrors": reading.tx_errors,
    }
    return {"time": _ns(time_ns), **interface, "interfaces": [interface]}


def _self_usage(time_ns: int) -> Usage:
    """This process's CPU and resident memory (the ``kubelet`` system container)."""
    rusage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_ns = int((rusage.ru_utime + rusage.ru_stime) * 1e9)
    rss = 0
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    return Usage(time_ns=time_ns, cpu_ns=cpu_ns, working_set=rss, usage=rss, rss=rss)


def _pods_usage(snapshot: Snapshot) -> Usage:
    def total(name: str) -> int | None:
        values = [getattr(p.usage, name) for p in snapshot.pods if getattr(p.usage, name) is not None]
        return sum(values) if values else None

    return Usage(
        time_ns=snapshot.time_ns,
        cpu_ns=total("cpu_ns"),
        nano_cores=total("nano_cores"),
        working_set=total("working_set"),
        usage=total("usage"),
        rss=total("rss"),
    )


def build_summary(snapshot: Snapshot, node_name: str, *, only_cpu_and_memory: bool = False) -> dict[str, Any]:
    host = snapshot.node
    system = [
        ("kubelet", _PROCESS_START, _self_usage(snapshot.time_ns)),
        ("pods", host.boot_time, _pods_usage(snapshot)),
    ]
    node: dict[str, Any] = {
        "nodeName": node_name,
        "systemContainers": [
            {"name": name, "startTime": rfc3339(start), "cpu": cpu(u), "memory": memory(u)}
            for name, start, u in system
        ],
        "startTime": rfc3339(host.boot_time),
        "cpu": cpu(snapshot.node_usage),
        "memory": memory(snapshot.node_usage, host.memory_available),
    }
    if not only_cpu_and_memory:
        t = host.time_ns
        node["network"] = network(host.network, t)
        node["fs"] = fs(host.rootfs, t)
        image = fs(snapshot.imagefs, t)
        node["runtime"] = _drop_none({"imageFs": image, "containerFs": image})
        node["rlimit"] = {"time": _ns(t), "maxpid": host.pid_max, "curproc": host.processes}
    return {
        "node": _drop_none(node),
        "pods": [_pod(p, snapshot, only_cpu_and_memory) for p in snapshot.pods],
    }


def _pod(pod: PodSample, snapshot: Snapshot, only_cpu_and_memory: bool) -> dict[str, Any]:
    containers = []
    ephemeral_used = 0
    ephemeral_inodes = 0
    for c in pod.containers:
        entry: dict[str, Any] = {
            "name": c.name,
            "startTime": rfc3339(c.start_time),
            "cpu": cpu(c.usage),
            "memory": memory(c.usage),
        }
        if not only_cpu_and_memory:
            entry["rootfs"] = fs(snapshot.imagefs, c.usage.time_ns, c.rootfs_used, c.rootfs_inodes_used)
            entry["logs"] = fs(snapshot.logs_fs, c.usage.time_ns, c.logs_used, c.logs_inodes_used)
            ephemeral_used += (c.rootfs_used or 0) + (c.logs_used or 0)
            ephemeral_inodes += (c.rootfs_inodes_used or 0) + (c.logs_inodes_used or 0)
        containers.append(_drop_none(entry))
    out: dict[str, Any] = {
        "podRef": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
        "startTime": rfc3339(pod.start_time),
        "containers": containers,
        "cpu": cpu(pod.usage),
        "memory": memory(pod.usage),
    }
    if not only_cpu_and_memory:
        t = pod.usage.time_ns
        out["network"] = network(pod.network, t)
        out["volume"] = [{**fs(v.fs, t, v.used, v.inodes_used), "name": v.name} for v in pod.volumes]
        for v in pod.volumes:  # what lives on the node's filesystem counts (not a memory emptyDir)
            if v.fs.device == snapshot.node.rootfs.device:
                ephemeral_used += v.used
                ephemeral_inodes += v.inodes_used
        out["ephemeral-storage"] = fs(snapshot.node.rootfs, t, ephemeral_used, ephemeral_inodes)
        if pod.process_count is not None:
            out["process_stats"] = {"process_count": pod.process_count}
    return _drop_none(out)
