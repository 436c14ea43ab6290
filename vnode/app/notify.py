"""The service manager's readiness protocol (sd_notify): a datagram to ``$NOTIFY_SOCKET``.

Under systemd with ``Type=notify`` the unit is "started" only when vnode says ``READY=1``, so a
dependent unit or an operator's ``systemctl start`` waits for the node to serve, not merely for the
process to exist. Without ``NOTIFY_SOCKET`` (not under a service manager) this does nothing. The
protocol is one line of text per datagram to a unix socket (an abstract one when the path starts
with ``@``); no library needed for that.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send ``state`` (``READY=1``, ``STOPPING=1``, ``STATUS=...``); True if a manager was told."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify the service manager at %s: %s", path, exc)
        return False
    return True
