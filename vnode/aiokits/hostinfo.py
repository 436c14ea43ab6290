"""Facts about the host that the node reports: its primary IPv4 address, capacity and identity.

The address is read from the kernel (the default route's interface in /proc/net/route, then its
address through the SIOCGIFADDR ioctl) rather than by resolving the host name, which on Debian maps
to 127.0.1.1. Capacity, pressure readings and the machine's identity come from /proc, /sys and
/etc the way kubelet's cadvisor reads them; ``read_host`` is blocking (call it in a thread).
"""

from __future__ import annotations

import fcntl
import os
import platform
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

SIOCGIFADDR = 0x8915


def default_interface() -> str | None:
    """The interface of the IPv4 default route, if there is one."""
    try:
        with open("/proc/net/route", encoding="ascii") as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "00000000":
                    return fields[0]
    except (OSError, StopIteration):
        return None
    return None


def interface_ipv4(name: str) -> str | None:
    """The IPv4 address of interface ``name``, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def primary_ipv4() -> str:
    """The address other machines most likely reach this one at; 127.0.0.1 when there is none."""
    iface = default_interface()
    if iface is not None:
        addr = interface_ipv4(iface)
        if addr:
            return addr
    return "127.0.0.1"


@dataclass(frozen=True)
class HostReading:
    cpus: int
    memory_bytes: int
    memory_available: int
    disk_bytes: int
    disk_free: int
    pids: int
    pid_max: int
    machine_id: str
    system_uuid: str
    boot_id: str
    kernel: str
    os_image: str


def _read(path: str, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def _meminfo() -> dict[str, int]:
    values = {}
    for line in _read("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            values[key] = int(parts[0]) * 1024
    return values


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return "Linux"


def read_host(data_dir: Path) -> HostReading:
    """The machine now; disk figures are for the filesystem holding ``data_dir``."""
    meminfo = _meminfo()
    path = data_dir if data_dir.exists() else Path("/")
    fs = os.statvfs(path)
    return HostReading(
        cpus=os.cpu_count() or 1,
        memory_bytes=meminfo.get("MemTotal", 0),
        memory_available=meminfo.get("MemAvailable", meminfo.get("MemFree", 0)),
        disk_bytes=fs.f_blocks * fs.f_frsize,
        disk_free=fs.f_bavail * fs.f_frsize,
        pids=sum(1 for d in os.listdir("/proc") if d.isdigit()),
        pid_max=int(_read("/proc/sys/kernel/pid_max", "32768") or 32768),
        machine_id=_read("/etc/machine-id"),
        system_uuid=_read("/sys/class/dmi/id/product_uuid").lower(),
        boot_id=_read("/proc/sys/kernel/random/boot_id"),
        kernel=platform.release(),
        os_image=_os_image(),
    )
