"""Facts about the host that the node reports: its primary IPv4 address.

Read from the kernel (the default route's interface in /proc/net/route, then its address through
the SIOCGIFADDR ioctl) rather than by resolving the host name, which on Debian maps to 127.0.1.1.
"""

from __future__ import annotations

import fcntl
import socket
import struct

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
