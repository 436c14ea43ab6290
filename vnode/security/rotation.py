"""Certificate rotation: the client and serving certificates renewed through CSRs, swapped live.

kubelet's certificate manager rule: a certificate is renewed at notBefore + a random 70-90 % of
its lifetime (the jitter spreads a fleet's renewals), at once when it no longer fits (serving SANs
that lack the node's current names), and a serving certificate is requested as soon as there is
none. Each renewal is a new EC key and CSR; the pair is written as ``kubelet-<kind>-<time>.pem``
(0600) and ``kubelet-<kind>-current.pem`` is switched to it (``bootstrap.install_pair``).

Swapping is ``load_cert_chain`` on the live ``SSLContext``: OpenSSL copies a context's certificate
into each connection when it is created, so new handshakes get the new pair and open connections
(log follows, watches, exec streams) keep theirs and are not dropped. The serving context is shared
by every HTTPS listener (kubelet API, local API); the client context is the masters client's.

kubelet-serving CSRs are not approved by Kubernetes itself: while one waits, vnode says so in its
log, in a ``ServingCertificatePending`` Event on the Node, and in ``<pki>/rotation.json``, which
``vnode status`` and ``vnode certs show`` print. X.509 work runs in a child process
(``bootstrap.keys_helper``), so the node never imports ``cryptography``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vnode import errors
from vnode.clients.masters import Masters
from vnode.security import bootstrap
from vnode.security.certs import ROTATION_STATE
from vnode.security.files import write_file

log = logging.getLogger(__name__)

RETRY = (5.0, 300.0)  # back-off bounds after a failed renewal attempt


def rotation_deadline(not_before: float, not_after: float, rng: random.Random | None = None) -> float:
    """notBefore + a random 70-90 % of the lifetime (client-go's nextRotationDeadline)."""
    fraction = 0.7 + 0.2 * (rng or random).random()
    return not_before + fraction * (not_after - not_before)


@dataclass
class Kind:
    """One certificate the rotator keeps: what to ask for and which context to swap."""

    name: str  # "client" or "server" (kubelet's file names)
    signer: str
    usages: list[str]
    context: ssl.SSLContext
    names: Callable[[], tuple[list[str], list[str]]] = lambda: ([], [])  # (DNS, IPs) for SANs
    state: dict[str, Any] = field(default_factory=dict)


async def current_pair(pki_dir: Path, kind: str, min_left: float = 60.0) -> Path | None:
    """``kubelet-<kind>-current.pem`` if it exists and is valid for ``min_left`` seconds more."""
    current = pki_dir / f"kubelet-{kind}-current.pem"
    try:
        pem = await asyncio.to_thread(current.read_text)
        facts = await bootstrap.keys_helper("describe", {"pem": pem})
    except (OSError, errors.InvalidInput):
        return None
    return current if float(facts["notAfter"]) - time.time() > min_left else None


class CertificateRotator:
    """Owns one long-lived task per rotated certificate; cancelled with the node."""

    def __init__(
        self,
        masters: Masters,
        pki_dir: Path,
        node_name: str,
        record_event: Callable[[dict[str, Any], str, str, str], None],
        node_uid: Callable[[], str | None] = lambda: None,
        csr_timeout: float = bootstrap.CSR_TIMEOUT,
    ) -> None:
        self.masters = masters
        self.pki_dir = pki_dir
        self.node_name = node_name
        self.record_event = record_event
        self.node_uid = node_uid
        self.csr_timeout = csr_timeout
        self.kinds: list[Kind] = []
        self._state: dict[str, dict[str, Any]] = {}

    def rotate_client(self, context: ssl.SSLContext) -> None:
        self.kinds.append(Kind("client", bootstrap.CLIENT_SIGNER, bootstrap.CLIENT_USAGES, context))

    def rotate_serving(
        self, context: ssl.SSLContext, names: Callable[[], tuple[list[str], list[str]]]
    ) -> None:
        self.kinds.append(Kind("server", bootstrap.SERVING_SIGNER, bootstrap.SERVING_USAGES, context, names))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for kind in self.kinds:
                group.create_task(self._keep(kind), name=f"rotate-{kind.name}")

    async def _keep(self, kind: Kind) -> None:
        failures = 0
        while True:
            due = await self._deadline(kind)
            if due > time.time():
                self._record(kind, {"renewAt": due})
                log.info("%s certificate renewal due in %.0fs", kind.name, due - time.time())
                await asyncio.sleep(due - time.time())
            try:
                await self.renew(kind)
                failures = 0
            except (errors.Unavailable, errors.InvalidInput, errors.JoinRefused, TimeoutError) as exc:
                failures += 1
                delay = min(RETRY[1], RETRY[0] * 2 ** (failures - 1)) * (0.5 + random.random() / 2)
                log.warning(
                    "renewing the %s certificate failed (%s); retrying in %.0fs", kind.name, exc, delay
                )
                await asyncio.sleep(delay)

    async def _deadline(self, kind: Kind) -> float:
        """When ``kind`` is due: now if there is no usable certificate or it no longer fits."""
        current = self.pki_dir / f"kubelet-{kind.name}-current.pem"
        try:
            facts = await bootstrap.keys_helper(
                "describe", {"pem": await asyncio.to_thread(current.read_text)}
            )
        except (OSError, errors.InvalidInput):
            return 0.0
        dns, ips = kind.names()
        if not (set(dns) <= set(facts["dns"]) and set(ips) <= set(facts["ips"])):
            log.info("the %s certificate does not name %s: renewing now", kind.name, ", ".join(dns + ips))
            return 0.0
        if kind.state.get("notAfter") != facts["notAfter"]:
            kind.state = {
                "notAfter": facts["notAfter"],
                "due": rotation_deadline(facts["notBefore"], facts["notAfter"]),
            }
        return float(kind.state["due"])

    async def renew(self, kind: Kind) -> Path:
        """One renewal: key and CSR, create, wait for it, install, swap. Returns the new file."""
        dns, ips = kind.names()
        made = await bootstrap.keys_helper(
            "csr", {"cn": f"system:node:{self.node_name}", "o": ["system:nodes"], "dns": dns, "ips": ips}
        )
        csr = await bootstrap.create_csr(
            self.masters, made["csr"], kind.signer, kind.usages, prefix=f"csr-{kind.name}-"
        )
        name = csr["metadata"]["name"]
        self._record(kind, {"pending": name, "since": time.time()})
        if kind.name == "server":
            message = (
                f"serving certificate CSR {name} for {', '.join(dns + ips)} is waiting for approval "
                "(kubelet-serving CSRs are not auto-approved: kubectl certificate approve " + name + ")"
            )
            log.warning("%s", message)
            node = {
                "kind": "Node",
                "metadata": {"name": self.node_name, "namespace": "default", "uid": self.node_uid() or ""},
            }
            self.record_event(node, "Normal", "ServingCertificatePending", message)
        else:
            log.info("client certificate CSR %s created; waiting for it to be issued", name)
        started = time.monotonic()
        cert = await bootstrap.wait_issued(self.masters, name, self.csr_timeout)
        current = await asyncio.to_thread(
            bootstrap.install_pair, self.pki_dir, kind.name, cert, made["key"].encode()
        )
        kind.context.load_cert_chain(str(current))  # new handshakes only: open streams keep theirs
        self._record(kind, {"issued": name, "at": time.time()})
        log.info(
            "%s certificate renewed through CSR %s (waited %.1fs); swapped in live",
            kind.name,
            name,
            time.monotonic() - started,
        )
        return current

    def _record(self, kind: Kind, entry: dict[str, Any]) -> None:
        """Keep ``rotation.json`` current for ``vnode status`` (a small file, written rarely)."""
        self._state["serving" if kind.name == "server" else "client"] = entry
        try:
            write_file(self.pki_dir / ROTATION_STATE, json.dumps(self._state).encode())
        except OSError as exc:
            log.warning("cannot record the rotation state: %s", exc)
