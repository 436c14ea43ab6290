"""Builds the concrete objects from Settings: the composition root, the only place that knows
every adapter.

The HTTP layer gets callables (``KubeletHandlers``), the pod manager gets the CRI client, the
store and the volume manager; nothing else constructs any of them. Every part is built once,
given what it needs at construction, and ``Components`` is made from the finished parts. This
module builds the core every node has (runtime, pod manager, pod sources, kubelet API, stats,
pressure, metrics); the optional subsystems are wired in modules of their own: a joined node's
controllers (``vnode.app.joined``), the local API (``vnode.app.localapi``), and the event bus
with MQTT and the device twins (``vnode.app.eventbus``, the only importer of those modules).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import stat
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vnode import errors
from vnode.aiokits.hostinfo import primary_ipv4
from vnode.api.credentials import ensure_token
from vnode.api.local import LocalApi
from vnode.api.server import KubeletHandlers
from vnode.api.stats import StatsHandlers
from vnode.api.streams import StreamHandlers, StreamLimits
from vnode.app import access as node_access
from vnode.app.eventbus import EventBus, build_event_bus, event_bus_metrics
from vnode.app.joined import Joined, build_joined
from vnode.app.localapi import build_local_api
from vnode.clients.kubeconfig import load_access
from vnode.clients.masters import Masters
from vnode.config.settings import Settings
from vnode.controllers.eventlog import EventLog
from vnode.controllers.events import EventPoster
from vnode.controllers.node import NodeController
from vnode.controllers.objects import MAX_WATCHES, ObjectCache
from vnode.controllers.openapi import OpenApiKeeper
from vnode.controllers.pods import SOURCE as API_SOURCE
from vnode.controllers.pods import PodInformer, StatusWriter
from vnode.metrics.node import NodeMetrics, NodeReadings, PodStartTracker
from vnode.probes.handlers import Handlers
from vnode.probes.manager import Prober
from vnode.provider.protocols import HealthCheck
from vnode.runtime import specs
from vnode.runtime.backoff import Backoff
from vnode.runtime.cgroups import CgroupDriver
from vnode.runtime.context import WorkerContext
from vnode.runtime.cri import CriClient
from vnode.runtime.pods import PodManager
from vnode.runtime.volumes import VolumeManager
from vnode.security import rotation
from vnode.security.sealing import Sealer
from vnode.security.tls import ensure_serving_pair, server_ssl_context
from vnode.sources.manifests import CONFIG_SEEN, ManifestSource
from vnode.sources.manifests import SOURCE as FILE_SOURCE
from vnode.stats import pressure as node_pressure
from vnode.stats.collector import StatsCollector
from vnode.stats.reclaim import ImageReclaimer
from vnode.store import Store

if TYPE_CHECKING:  # imported at run time only when the event bus is enabled
    from vnode.devices.twins import DeviceTwins
    from vnode.devices.watch import DeviceWatch
    from vnode.mqtt.broker import Broker
    from vnode.mqtt.client import ExternalBus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Components:
    """Everything a running node is made of, built whole by ``build``; ``close`` releases it in
    reverse order."""

    settings: Settings
    store: Store
    cri: CriClient
    events: EventLog
    pods: PodManager
    manifests: ManifestSource | None
    ssl_context: ssl.SSLContext
    kubelet_handlers: KubeletHandlers
    healthz_handlers: KubeletHandlers
    stats: StatsCollector
    metrics: NodeMetrics
    prober: Prober
    pressure: node_pressure.PressureMonitor
    masters: Masters | None = None
    objects: ObjectCache | None = None
    node: NodeController | None = None
    informer: PodInformer | None = None
    status_writer: StatusWriter | None = None
    event_poster: EventPoster | None = None
    local_api: LocalApi | None = None
    rotator: rotation.CertificateRotator | None = None
    openapi: OpenApiKeeper | None = None
    mqtt: Broker | None = None  # vnode's own MQTT broker (eventBus.mqttMode 0 or 1)
    mqtt_external: ExternalBus | None = None  # vnode's clients of an external broker (modes 1, 2)
    twins: DeviceTwins | None = None  # KubeEdge-compatible device twins on the event bus
    device_watch: DeviceWatch | None = None  # the node's KubeEdge Devices, with a control plane

    async def close(self) -> None:
        if self.mqtt is not None:
            await self.mqtt.close()
        if self.mqtt_external is not None:
            await self.mqtt_external.flush()  # messages published last wait in the store
        await self.pods.stop()
        if self.objects is not None:
            await self.objects.close()
        if self.masters is not None:
            await self.masters.close()
        await self.cri.close()
        await self.store.close()


def check_runtime_endpoint(endpoint: str) -> None:
    """Refuse an endpoint path that exists but is not a socket; a missing one may appear later."""
    path = Path(endpoint.removeprefix("unix://"))
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        log.warning("container runtime socket %s does not exist yet; waiting for it", path)
        return
    except OSError as exc:
        raise errors.ConfigError("runtime.containerRuntimeEndpoint", f"{path}: {exc}") from exc
    if not stat.S_ISSOCK(mode):
        raise errors.ConfigError("runtime.containerRuntimeEndpoint", f"{path} exists but is not a socket")


def serving_cert_path(settings: Settings) -> Path:
    """The serving certificate in use: the configured one, or the generated one."""
    server = settings.server
    if server.tls_cert_file is not None and server.tls_private_key_file is not None:
        return server.tls_cert_file
    return settings.pki_dir / "kubelet.crt"


async def tls_context(settings: Settings, host_ip: str) -> ssl.SSLContext:
    """The configured serving pair, or a self-signed one kept under the root dir."""
    server = settings.server
    cert, key = server.tls_cert_file, server.tls_private_key_file
    if (cert is None or key is None) and server.rotate_server_certificates and settings.cluster.configured:
        issued = await rotation.current_pair(settings.pki_dir, "server")  # one issued through a CSR
        if issued is not None:
            return await asyncio.to_thread(server_ssl_context, issued, issued)
    if cert is None or key is None:
        cert = settings.pki_dir / "kubelet.crt"
        key = settings.pki_dir / "kubelet.key"
        binds = [server.address] + ([server.local_api_address] if server.local_api_port else [])
        ips = sorted({host_ip, "127.0.0.1", *(a for a in binds if a not in ("0.0.0.0", "::"))})
        await asyncio.to_thread(ensure_serving_pair, cert, key, hostnames=[settings.node.name], ips=ips)
    context = await asyncio.to_thread(server_ssl_context, cert, key)
    return await node_access.secure_context(settings, context)


async def build(settings: Settings) -> Components:
    check_runtime_endpoint(settings.runtime.endpoint)
    node_access.check(settings)
    access = None
    if settings.cluster.configured:
        access = await asyncio.to_thread(load_access, settings.cluster.kubeconfig, settings.cluster.master)
    host_ip = settings.node.node_ip or primary_ipv4()
    ssl_context = await tls_context(settings, host_ip)
    store = await Store.open(settings.store_path, map_size=settings.store.map_size)
    metrics = NodeMetrics()
    masters = Masters(access, on_response=metrics.rest_request) if access is not None else None
    token = (
        await asyncio.to_thread(ensure_token, settings.local_token_path)
        if settings.server.local_api_port
        else None
    )
    guards = node_access.build_access(settings, masters, token)
    try:
        objects = None
        if access is not None and masters is not None:
            store.claim(access.identity(settings.node.name))
            # Object watches get a client of their own: each holds a connection while it is open.
            watches = Masters(access, limit=MAX_WATCHES)
            objects = ObjectCache(masters, store, Sealer(settings.store_key_file), watches=watches)
        core = await _build_core(settings, store, host_ip, objects, metrics, guards.kubelet.kubelet)
    except BaseException:
        await store.close()
        raise
    # The pressure monitor's Node Events name the Node's UID once the node controller knows it;
    # the controller is built after the monitor (it reports the monitor's conditions).
    node: NodeController | None = None
    pressure = _pressure(settings, core, node_uid=lambda: node.uid if node is not None else None)
    joined = None
    if masters is not None:
        joined = build_joined(
            settings,
            masters,
            store=store,
            cri=core.cri,
            pods=core.pods,
            events=core.events,
            objects=objects,
            pressure=pressure,
            ssl_context=ssl_context,
            host_ip=host_ip,
        )
        node = joined.node
    bus = await build_event_bus(settings, store, masters) if settings.event_bus.enable else None
    _readings(metrics, core.pods, store, joined, bus)
    local_api = None
    if token is not None:
        local_api = build_local_api(
            settings,
            host_ip,
            token,
            guards.local.local,
            pods=core.pods,
            cri=core.cri,
            events=core.events,
            kubelet_handlers=core.kubelet_handlers,
            pressure=pressure,
            node_controller=node,
            objects=objects,
            openapi=joined.openapi if joined is not None else None,
        )
    return Components(
        settings=settings,
        store=store,
        cri=core.cri,
        events=core.events,
        pods=core.pods,
        manifests=core.manifests,
        ssl_context=ssl_context,
        kubelet_handlers=core.kubelet_handlers,
        healthz_handlers=core.healthz_handlers,
        stats=core.stats,
        metrics=metrics,
        prober=core.prober,
        pressure=pressure,
        masters=masters,
        objects=objects,
        node=node,
        informer=joined.informer if joined is not None else None,
        status_writer=joined.status_writer if joined is not None else None,
        event_poster=joined.event_poster if joined is not None else None,
        local_api=local_api,
        rotator=joined.rotator if joined is not None else None,
        openapi=joined.openapi if joined is not None else None,
        mqtt=bus.mqtt if bus is not None else None,
        mqtt_external=bus.mqtt_external if bus is not None else None,
        twins=bus.twins if bus is not None else None,
        device_watch=bus.device_watch if bus is not None else None,
    )


@dataclass(frozen=True)
class _Core:
    """What every node has, standalone or joined."""

    cri: CriClient
    events: EventLog
    pods: PodManager
    manifests: ManifestSource | None
    kubelet_handlers: KubeletHandlers
    healthz_handlers: KubeletHandlers
    stats: StatsCollector
    prober: Prober


def _pressure(
    settings: Settings, core: _Core, node_uid: Callable[[], str | None]
) -> node_pressure.PressureMonitor:
    """The pressure monitor over the stats; a flip is a Node Event, as kubelet records it."""
    name = settings.node.name
    pods = core.pods

    def flipped(reason: str) -> None:
        ref = {"kind": "Node", "metadata": {"name": name, "namespace": "default", "uid": node_uid() or name}}
        core.events.event(ref, "Normal", reason, f"Node {name} status is now: {reason}")

    resources = settings.resources
    return node_pressure.PressureMonitor(
        core.stats,
        resources.eviction_hard,
        transition_period=resources.eviction_pressure_transition_period,
        interval=resources.housekeeping_interval,
        record_event=flipped,
        reclaim_disk=ImageReclaimer(core.cri).reclaim,
        pods=lambda: [w.pod for w in pods.workers() if w.evicted is None and not w.deleting],
        evict=pods.evict,
        soft=resources.eviction_soft,
        soft_grace=resources.eviction_soft_grace_period,
    )


def _readings(
    metrics: NodeMetrics, pods: PodManager, store: Store, joined: Joined | None, bus: EventBus | None
) -> None:
    """The scrape-time gauges of ``/metrics``, each read from the state's owner."""

    def running_pods() -> int:
        return sum(1 for w in pods.workers() if (s := w.last_observed.sandbox) is not None and s.ready)

    def containers_by_state() -> dict[str, int]:
        states = Counter(obs.state.value for w in pods.workers() for obs in w.last_observed.all_containers())
        return dict(states)

    node = joined.node if joined is not None else None
    poster = joined.event_poster if joined is not None else None
    metrics.add_readings(
        NodeReadings(
            running_pods=running_pods,
            containers_by_state=containers_by_state,
            link_online=lambda: None if node is None else node.offline_since is None,
            offline_seconds=lambda: node.offline_seconds() if node is not None else 0.0,
            store_info=store.info,
            events_backlog=lambda: poster.backlog if poster is not None else None,
            extra=[lambda: event_bus_metrics(bus)] if bus is not None else [],
        )
    )
    starts = PodStartTracker(metrics.pod_started)

    def status_changed(uid: str) -> None:
        known = pods.status_of(uid)
        starts.status(uid, known[1] if known is not None else None, datetime.now(tz=UTC))

    pods.add_listener(status_changed)


async def _build_core(
    settings: Settings,
    store: Store,
    host_ip: str,
    objects: ObjectCache | None,
    metrics: NodeMetrics,
    kubelet_guard: Any,
) -> _Core:
    cri = CriClient(
        settings.runtime.endpoint, timeout=settings.runtime.request_timeout, on_call=metrics.runtime_call
    )
    events = EventLog(store=store)
    servers, searches, options = await asyncio.to_thread(specs.read_resolv_conf, settings.pods.resolv_conf)
    dns = specs.DNSSettings(
        cluster_domain=settings.pods.cluster_domain,
        cluster_dns=list(settings.pods.cluster_dns),
        host_servers=servers,
        host_searches=searches,
        host_options=options,
    )
    prober = Prober(Handlers(cri.exec_sync), events.event)
    ctx = WorkerContext(
        cri=cri,
        volumes=VolumeManager(settings.root_dir / "pods"),
        events=events,
        node_name=settings.node.name,
        host_ip=host_ip,
        logs_dir=settings.pods.logs_dir,
        dns=dns,
        crash_backoff=Backoff(10.0, settings.pods.crash_loop_backoff_max),
        image_backoff=Backoff(10.0, 300.0),
        objects=objects,
        cgroups=CgroupDriver(settings.runtime.cgroup_driver, cri.cgroup_driver),
        prober=prober,
    )
    sources = [FILE_SOURCE] if settings.pods.manifest_path is not None else []
    if settings.cluster.configured:
        sources.append(API_SOURCE)
    pods = PodManager(ctx, store, sources=sources, relist_period=settings.runtime.relist_period)
    restored = pods.restore()
    if restored:
        log.info("restored %d pod(s) from the store", restored)
    manifests = None
    if settings.pods.manifest_path is not None:
        manifests = ManifestSource(
            settings.pods.manifest_path,
            settings.node.name,
            pods.set_source_pods,
            check_frequency=settings.pods.file_check_frequency,
            seen=pods.first_seen(FILE_SOURCE, CONFIG_SEEN),
        )

    async def check_ping() -> None:
        return None

    checks: dict[str, HealthCheck] = {
        "ping": check_ping,
        "log": check_ping,
        "runtime": pods.check_runtime,
        "syncloop": pods.check_sync,
    }
    server = settings.server
    limits = StreamLimits(
        idle_timeout=server.streaming_connection_idle_timeout,
        creation_timeout=server.stream_creation_timeout,
        per_pod=server.max_streams_per_pod,
        total=server.max_streams,
    )
    stats = StatsCollector(cri, settings.node.name, settings.root_dir, settings.pods.logs_dir)
    handlers = KubeletHandlers(
        pods=pods,
        logs=pods,
        health_checks=checks,
        streams=StreamHandlers(pods, limits),
        stats=StatsHandlers(stats, metrics, settings.node.name, probes=prober.render),
        guard=kubelet_guard,
    )
    healthz_handlers = KubeletHandlers(pods=pods, logs=None, health_checks=checks)
    return _Core(
        cri=cri,
        events=events,
        pods=pods,
        manifests=manifests,
        kubelet_handlers=handlers,
        healthz_handlers=healthz_handlers,
        stats=stats,
        prober=prober,
    )
