"""Wiring of what a node joined to a control plane adds: the Node and its status, the API's pods
and their status, Events posted, certificate rotation, the OpenAPI document kept for the local API.

Apart from the core (``vnode.app.wiring``: runtime, pod manager, kubelet API) because a standalone
node has none of it, and each controller here is given the core's parts it reads at construction.
"""

from __future__ import annotations

import logging
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from vnode.clients.masters import Masters
from vnode.config.settings import Settings
from vnode.controllers.eventlog import EventLog
from vnode.controllers.events import EventPoster
from vnode.controllers.node import NodeController, NodeIdentity
from vnode.controllers.objects import ObjectCache
from vnode.controllers.openapi import OpenApiKeeper
from vnode.controllers.pods import PodInformer, StatusWriter
from vnode.runtime.cri import CriClient
from vnode.runtime.pods import PodManager
from vnode.security import rotation
from vnode.stats import pressure as node_pressure
from vnode.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Joined:
    """The controllers of a joined node."""

    node: NodeController
    informer: PodInformer
    status_writer: StatusWriter
    event_poster: EventPoster
    openapi: OpenApiKeeper
    rotator: rotation.CertificateRotator | None


def build_joined(
    settings: Settings,
    masters: Masters,
    *,
    store: Store,
    cri: CriClient,
    pods: PodManager,
    events: EventLog,
    objects: ObjectCache | None,
    pressure: node_pressure.PressureMonitor,
    ssl_context: ssl.SSLContext,
    host_ip: str,
) -> Joined:
    poster = EventPoster(masters, settings.node.name, store)
    events.add_listener(poster.record)
    node = _node_controller(
        settings,
        masters,
        host_ip,
        store=store,
        cri=cri,
        pods=pods,
        pressure=pressure,
        events=events,
        offline_summary=lambda since: offline_summary(events, poster, since),
    )
    informer = PodInformer(masters, settings.node.name, pods)
    writer = StatusWriter(masters, pods, informer, node_uid=lambda: node.uid)
    if objects is not None:
        objects.add_listener(pods.object_changed)
    rotator = _rotator(settings, masters, events, ssl_context, host_ip, node_uid=lambda: node.uid)
    return Joined(
        node=node,
        informer=informer,
        status_writer=writer,
        event_poster=poster,
        openapi=OpenApiKeeper(masters, store),
        rotator=rotator,
    )


def _rotator(
    settings: Settings,
    masters: Masters,
    events: EventLog,
    ssl_context: ssl.SSLContext,
    host_ip: str,
    node_uid: Callable[[], str | None],
) -> rotation.CertificateRotator | None:
    """Client rotation for a joined node's certificate, serving rotation unless files are configured."""
    rotator = rotation.CertificateRotator(
        masters, settings.pki_dir, settings.node.name, events.event, node_uid=node_uid
    )
    client_pem = settings.pki_dir / "kubelet-client-current.pem"
    if settings.cluster.rotate_certificates and masters.access.ssl_context is not None:
        if client_pem.exists():
            rotator.rotate_client(masters.access.ssl_context)
        else:
            log.warning("--rotate-certificates: no %s (written by vnode join); not rotating", client_pem)
    server = settings.server
    if server.rotate_server_certificates and (
        server.tls_cert_file is None or server.tls_private_key_file is None
    ):
        ips = sorted({host_ip, *(a for a in [server.address] if a not in ("0.0.0.0", "::"))})
        rotator.rotate_serving(ssl_context, lambda: ([settings.node.name], ips))
    return rotator if rotator.kinds else None


def _node_controller(
    settings: Settings,
    masters: Masters,
    host_ip: str,
    *,
    store: Store,
    cri: CriClient,
    pods: PodManager,
    pressure: node_pressure.PressureMonitor,
    events: EventLog,
    offline_summary: Callable[[datetime], str],
) -> NodeController:
    identity = NodeIdentity(
        name=settings.node.name,
        ip=host_ip,
        port=settings.server.port,
        root_dir=settings.root_dir,
        max_pods=settings.pods.max_pods,
        labels=dict(settings.node.labels),
        taints=list(settings.cluster.register_with_taints),
    )

    async def runtime_version() -> str:
        version = await cri.version()
        return f"{version.runtime_name}://{version.runtime_version}"

    return NodeController(
        masters,
        identity,
        runtime_version=runtime_version,
        runtime_problem=lambda: pods.runtime_error,
        report_frequency=settings.cluster.node_status_report_frequency,
        on_deleted=settings.cluster.on_node_deleted,
        store=store,
        offline_summary=offline_summary,
        record_event=events.event,
        store_problem=lambda: pods.store_problem,
        pressure=pressure.conditions,
        allocatable=lambda capacity: node_pressure.allocatable(
            capacity,
            _reserved(settings.resources.kube_reserved, settings.resources.system_reserved),
            settings.resources.eviction_hard,
        ),
    )


def _reserved(*groups: dict[str, int]) -> dict[str, int]:
    total: dict[str, int] = {}
    for group in groups:
        for name, amount in group.items():
            total[name] = total.get(name, 0) + amount
    return total


def offline_summary(events: EventLog, poster: EventPoster | None, since: datetime) -> str:
    """What the node's Events say happened since ``since``, by reason, and what was dropped."""
    reasons = Counter(e.reason for e in events.events if e.time >= since and e.kind == "Pod")
    parts = [f"{reason} x{count}" for reason, count in sorted(reasons.items())]
    dropped = poster.dropped if poster is not None else 0
    return ", ".join(parts or ["no pod events"]) + (f"; {dropped} events dropped" if dropped else "")
