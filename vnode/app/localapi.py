"""Wiring of the read-only local API: what it serves from, on a joined node and a standalone one.

Apart from the core wiring (``vnode.app.wiring``) because it reads from nearly every other part
(the pod manager, the Node as the API last showed it or a stub built here from the host, the
durable object cache, the kubelet API's stream and stats handlers, the Events, the OpenAPI
document) and only when ``server.localAPIPort`` is set; each is given to it at construction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from vnode.aiokits import hostinfo
from vnode.api.local import EmptyObjects, LocalApi, LocalSources, minimal_node
from vnode.api.server import KubeletHandlers
from vnode.config.settings import Settings
from vnode.controllers.eventlog import EventLog
from vnode.controllers.node import KUBELET_VERSION, NodeController
from vnode.controllers.objects import ObjectCache
from vnode.controllers.openapi import OpenApiKeeper
from vnode.runtime.cri import CriClient
from vnode.runtime.pods import PodManager
from vnode.stats.pressure import PressureMonitor


def build_local_api(
    settings: Settings,
    host_ip: str,
    token: str,
    access: Callable[[web.Request], Awaitable[tuple[int, str] | None]],
    *,
    pods: PodManager,
    cri: CriClient,
    events: EventLog,
    kubelet_handlers: KubeletHandlers,
    pressure: PressureMonitor,
    node_controller: NodeController | None,
    objects: ObjectCache | None,
    openapi: OpenApiKeeper | None,
) -> LocalApi:
    """The read-only local API: pods from the pod manager, the Node as the API last showed it
    (or a minimal one built here), and the objects of the durable cache (none standalone)."""
    started = datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def node() -> dict[str, Any]:
        known = node_controller.current if node_controller is not None else None
        if known is not None:
            return known
        host = hostinfo.read_host(settings.root_dir)
        info = {
            "machineID": host.machine_id,
            "systemUUID": host.system_uuid,
            "bootID": host.boot_id,
            "kernelVersion": host.kernel,
            "osImage": host.os_image,
            "containerRuntimeVersion": cri.runtime_version,
        }
        return minimal_node(
            settings.node.name,
            host_ip,
            settings.node.labels,
            pods.runtime_error,
            started,
            KUBELET_VERSION,
            pressure.conditions(),
            info,
        )

    return LocalApi(
        LocalSources(
            pods,
            node,
            objects if objects is not None else EmptyObjects(),
            token,
            KUBELET_VERSION,
            kubelet_handlers.streams,
            stats=kubelet_handlers.stats,
            access=access,
            events=lambda: events.v1_events(settings.node.name),
            watch_events=events.watch,
            openapi=openapi.kept if openapi is not None else lambda: None,
        )
    )
