"""The host's own numbers, read the way cAdvisor reads them for kubelet's node summary.

CPU: cumulative busy time from ``/proc/stat`` (every field but idle and iowait; guest time is
already in user). Memory: usage = MemTotal - MemFree, working set = usage - Inactive(file)
(what the kernel cannot reclaim cheaply, and what kubelet's ``memory.available`` subtracts from
capacity), available = MemAvailable. Filesystems: ``statvfs``. Processes: the running count and
``pid_max`` (kubelet's ``rlimit``). Network: ``/proc/net/dev`` for the default route's interface.
Everything here blocks; callers run it in a thread.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from vnode.aiokits.hostinfo import default_interface

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class FsReading:
    capacity: int
    available: int
    used: int
    inodes: int
    inodes_free: int
    device: int = 0  # st_dev, to tell filesystems apart

    @property
    def inodes_used(self) -> int:
        return self.inodes - self.inodes_free


@dataclass(frozen=True)
class NetReading:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


@dataclass(frozen=True)
class HostSample:
    time_ns: int
    boot_time: float  # seconds since the epoch
    cpu_ns: int  # cumulative busy CPU time
    memory_total: int
    memory_available: int
    memory_usage: int
    memory_working_set: int
    memory_rss: int
    page_faults: int
    major_page_faults: int
    rootfs: FsReading
    pid_max: int
    processes: int
    network: NetReading | None


def read_cpu_ns(text: str) -> int:
    """Busy CPU nanoseconds from ``/proc/stat``'s aggregate line."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            fields = [int(v) for v in line.split()[1:]]
            busy = sum(fields[:8]) - fields[3] - (fields[4] if len(fields) > 4 else 0)
            return busy * 1_000_000_000 // CLOCK_TICKS
    return 0


def parse_keyed(text: str, sep: str = ":") -> dict[str, int]:
    """``key: value [kB]`` lines (meminfo, in bytes) or ``key value`` lines (vmstat)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(sep) if sep in line else line.partition(" ")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
            values[key.strip()] = int(parts[0]) * scale
    return values


def statfs(path: Path) -> FsReading:
    fs = os.statvfs(path)
    return FsReading(
        capacity=fs.f_blocks * fs.f_frsize,
        available=fs.f_bavail * fs.f_frsize,
        used=(fs.f_blocks - fs.f_bfree) * fs.f_frsize,
        inodes=fs.f_files,
        inodes_free=fs.f_ffree,
        device=os.stat(path).st_dev,
    )


def read_network(interface: str | None) -> NetReading | None:
    if interface is None:
        return None
    try:
        text = Path("/proc/net/dev").read_text()
    except OSError:
        return None
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        if name.strip() == interface:
            f = [int(v) for v in rest.split()]
            return NetReading(interface, rx_bytes=f[0], rx_errors=f[2], tx_bytes=f[8], tx_errors=f[10])
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def read_host(root: Path) -> HostSample:
    """The host now; the root filesystem is the one holding ``root`` (kubelet's nodefs)."""
    stat = _read("/proc/stat")
    meminfo = parse_keyed(_read("/proc/meminfo"))
    vmstat = parse_keyed(_read("/proc/vmstat"), sep=" ")
    total, free = meminfo.get("MemTotal", 0), meminfo.get("MemFree", 0)
    usage = max(0, total - free)
    working_set = max(0, usage - meminfo.get("Inactive(file)", 0))
    boot = 0.0
    for line in stat.splitlines():
        if line.startswith("btime "):
            boot = float(line.split()[1])
    loadavg = _read("/proc/loadavg").split()
    processes = int(loadavg[3].split("/")[1]) if len(loadavg) > 3 and "/" in loadavg[3] else 0
    return HostSample(
        time_ns=time.time_ns(),
        boot_time=boot,
        cpu_ns=read_cpu_ns(stat),
        memory_total=total,
        memory_available=meminfo.get("MemAvailable", free),
        memory_usage=usage,
        memory_working_set=working_set,
        memory_rss=meminfo.get("AnonPages", 0),
        page_faults=vmstat.get("pgfault", 0),
        major_page_faults=vmstat.get("pgmajfault", 0),
        rootfs=statfs(root if root.exists() else Path("/")),
        pid_max=int(_read("/proc/sys/kernel/pid_max").strip() or 32768),
        processes=processes,
        network=read_network(default_interface()),
    )


def dir_usage(path: Path) -> tuple[int, int]:
    """(bytes, inodes) under ``path`` (the pod logs), 0s when it does not exist."""
    total = inodes = 0
    for dirpath, _dirs, filenames in os.walk(path):
        inodes += 1 + len(filenames)
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
    return total, inodes
