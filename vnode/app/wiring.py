"""Builds the concrete objects from Settings: the only module that knows every adapter.

The HTTP layer gets callables (``KubeletHandlers``), the pod manager gets the CRI client, the
store and the volume manager; nothing else constructs any of them. Imports of optional, heavy
packages (the API client, the MQTT broker) will happen here, and only for the modes that use them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import stat
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from vnode import errors
from vnode.aiokits import hostinfo
from vnode.aiokits.hostinfo import primary_ipv4
from vnode.api.credentials import ensure_token
from vnode.api.local import EmptyObjects, LocalApi, LocalSources, minimal_node
from vnode.api.server import KubeletHandlers
from vnode.api.stats import StatsHandlers
from vnode.api.streams import StreamHandlers, StreamLimits
from vnode.app import access as node_access
from vnode.clients.kubeconfig import load_access
from vnode.clients.masters import Masters
from vnode.config.settings import Settings
from vnode.controllers.eventlog import EventLog
from vnode.controllers.events import EventPoster
from vnode.controllers.node import KUBELET_VERSION, NodeController, NodeIdentity
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

if TYPE_CHECKING:  # imported at run time only when MQTT is enabled
    from vnode.devices.twins import DeviceTwins
    from vnode.devices.watch import DeviceWatch
    from vnode.mqtt.broker import Broker
    from vnode.mqtt.client import ExternalBus

log = logging.getLogger(__name__)


@dataclass
class Components:
    """Everything a running node is made of; ``close`` releases it in reverse order."""

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
    pressure: node_pressure.PressureMonitor | None = None
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
        components = await _build_with_store(
            settings, store, host_ip, ssl_context, objects, metrics, guards.kubelet.kubelet
        )
    except BaseException:
        await store.close()
        raise
    components.pressure = _pressure(settings, components)
    if masters is not None:
        components.masters = masters
        components.objects = objects
        components.node = _node_controller(settings, components, host_ip)
        pods = components.pods
        informer = components.informer = PodInformer(masters, settings.node.name, pods)
        node = components.node
        components.status_writer = StatusWriter(masters, pods, informer, node_uid=lambda: node.uid)
        if objects is not None:
            objects.add_listener(pods.object_changed)
        poster = components.event_poster = EventPoster(masters, settings.node.name, store)
        components.events.add_listener(poster.record)
        components.rotator = _rotator(settings, components, masters, host_ip)
        components.openapi = OpenApiKeeper(masters, store)
    _readings(components)
    if settings.event_bus.enable:
        await _event_bus(settings, components)
    if token is not None:
        components.local_api = _local_api(settings, components, host_ip, token, guards.local.local)
    return components


def mqtt_address(server: str) -> tuple[str, int]:
    """Host and port of an eventBus server URL (``tcp://host:port``, checked by the loader)."""
    host, _, port = server.split("://", 1)[1].rpartition(":")
    return host.strip("[]"), int(port)


async def _event_bus(settings: Settings, c: Components) -> None:
    """The event bus of the configured mode and the device twins on it; MQTT's modules are
    imported only here."""
    from vnode.devices.twins import Bus, DeviceTwins, Reports
    from vnode.devices.watch import DeviceWatch
    from vnode.mqtt.client import ExternalBus, FanoutBus

    bus = settings.event_bus
    if bus.internal:
        c.mqtt = await _mqtt_broker(settings, c.store)
    if bus.external:
        host, port = mqtt_address(bus.mqtt_server_external)
        context = None
        if bus.mqtt_server_external.startswith("ssl://"):
            context = await asyncio.to_thread(
                _mqtt_client_context,
                bus.tls_mqtt_cert_file,
                bus.tls_mqtt_private_key_file,
                bus.tls_mqtt_ca_file,
            )
        c.mqtt_external = ExternalBus(
            host,
            port,
            c.store,
            sub_client_id=bus.mqtt_sub_client_id or f"hub-client-sub-{settings.node.name}",
            pub_client_id=bus.mqtt_pub_client_id or f"hub-client-pub-{settings.node.name}",
            credentials=(bus.mqtt_username, bus.mqtt_password) if bus.mqtt_username else None,
            ssl_context=context,
        )
    on: Bus
    if c.mqtt is not None and c.mqtt_external is not None:
        on = FanoutBus(c.mqtt, c.mqtt_external)
    elif c.mqtt is not None:
        on = c.mqtt
    else:
        assert c.mqtt_external is not None
        on = c.mqtt_external
    reports = Reports() if c.masters is not None else None
    c.twins = DeviceTwins(
        c.store, on, settings.node.name, qos=bus.mqtt_qos, retain=bus.mqtt_retain, reports=reports
    )
    if c.masters is not None and reports is not None:
        c.device_watch = DeviceWatch(c.masters, c.twins, reports, settings.node.name)


def _mqtt_client_context(cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext:
    """TLS to the external broker: its certificate checked against the CA file (or the system's),
    with the client pair when configured."""
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise errors.ConfigError("eventBus.tlsMqttCAFile", f"cannot load {ca}: {exc}") from exc
    if cert is not None and key is not None:
        try:
            context.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise errors.ConfigError(
                "eventBus.tlsMqttCertFile", f"cannot load {cert} / {key}: {exc}"
            ) from exc
    return context


async def _mqtt_broker(settings: Settings, store: Store) -> Broker:
    """The internal broker; its module is imported only here, when MQTT is on."""
    from vnode.mqtt.broker import Broker

    bus = settings.event_bus
    context = None
    if bus.mqtt_server_internal.startswith("ssl://"):
        assert bus.tls_mqtt_cert_file is not None and bus.tls_mqtt_private_key_file is not None
        context = await asyncio.to_thread(
            _mqtt_server_context, bus.tls_mqtt_cert_file, bus.tls_mqtt_private_key_file, bus.tls_mqtt_ca_file
        )
    credentials = (bus.mqtt_username, bus.mqtt_password) if bus.mqtt_username else None
    return Broker(
        queue_size=bus.mqtt_session_queue_size, credentials=credentials, ssl_context=context, store=store
    )


def _mqtt_server_context(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    """TLS for the internal broker; with a CA file, clients must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise errors.ConfigError("eventBus.tlsMqttCertFile", f"cannot load {cert} / {key}: {exc}") from exc
    if ca is not None:
        try:
            context.load_verify_locations(str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise errors.ConfigError("eventBus.tlsMqttCAFile", f"cannot load {ca}: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _local_api(
    settings: Settings,
    c: Components,
    host_ip: str,
    token: str,
    access: Callable[[web.Request], Awaitable[tuple[int, str] | None]],
) -> LocalApi:
    """The read-only local API: pods from the pod manager, the Node as the API last showed it
    (or a minimal one built here), and the objects of the durable cache (none standalone)."""
    started = datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def node() -> dict[str, Any]:
        known = c.node.current if c.node is not None else None
        if known is not None:
            return known
        labels = settings.node.labels
        pressure = c.pressure.conditions() if c.pressure is not None else []
        host = hostinfo.read_host(settings.root_dir)
        info = {
            "machineID": host.machine_id,
            "systemUUID": host.system_uuid,
            "bootID": host.boot_id,
            "kernelVersion": host.kernel,
            "osImage": host.os_image,
            "containerRuntimeVersion": c.cri.runtime_version,
        }
        return minimal_node(
            settings.node.name,
            host_ip,
            labels,
            c.pods.runtime_error,
            started,
            KUBELET_VERSION,
            pressure,
            info,
        )

    objects = c.objects if c.objects is not None else EmptyObjects()
    streams = c.kubelet_handlers.streams
    return LocalApi(
        LocalSources(
            c.pods,
            node,
            objects,
            token,
            KUBELET_VERSION,
            streams,
            stats=c.kubelet_handlers.stats,
            access=access,
            events=lambda: c.events.v1_events(settings.node.name),
            watch_events=c.events.watch,
            openapi=c.openapi.kept if c.openapi is not None else lambda: None,
        )
    )


def _pressure(settings: Settings, c: Components) -> node_pressure.PressureMonitor:
    """The pressure monitor over the stats; a flip is a Node Event, as kubelet records it."""
    name = settings.node.name

    def flipped(reason: str) -> None:
        uid = (c.node.uid if c.node is not None else None) or name
        ref = {"kind": "Node", "metadata": {"name": name, "namespace": "default", "uid": uid}}
        c.events.event(ref, "Normal", reason, f"Node {name} status is now: {reason}")

    resources = settings.resources
    return node_pressure.PressureMonitor(
        c.stats,
        resources.eviction_hard,
        transition_period=resources.eviction_pressure_transition_period,
        interval=resources.housekeeping_interval,
        record_event=flipped,
        reclaim_disk=ImageReclaimer(c.cri).reclaim,
        pods=lambda: [w.pod for w in c.pods.workers() if w.evicted is None and not w.deleting],
        evict=c.pods.evict,
        soft=resources.eviction_soft,
        soft_grace=resources.eviction_soft_grace_period,
    )


def _event_bus_metrics(c: Components) -> Iterable[Metric]:
    """The broker's, the external clients' and the twins' counters (none with MQTT off)."""
    if c.mqtt is not None:
        s = c.mqtt.stats
        yield GaugeMetricFamily(
            "vnode_mqtt_clients_connected", "Clients connected to vnode's broker", value=c.mqtt.connected
        )
        for name, value, text in (
            ("received", s.received, "PUBLISH packets received from clients"),
            ("delivered", s.delivered, "PUBLISH packets written to clients"),
            ("dropped", s.dropped, "Messages dropped from full session queues"),
            ("malformed", s.malformed, "Connections closed for a malformed packet or protocol violation"),
            ("expired", s.expired, "Connections closed by the keepalive"),
            ("wills", s.wills, "Will messages published"),
            ("refused_sys", s.refused_sys, "Client publishes to $SYS, acknowledged and dropped"),
        ):
            yield CounterMetricFamily(f"vnode_mqtt_{name}", text, value=value)
    if c.mqtt_external is not None:
        x = c.mqtt_external
        yield GaugeMetricFamily(
            "vnode_mqtt_external_connected",
            "Both clients connected to the external broker",
            value=int(x.connected),
        )
        yield GaugeMetricFamily(
            "vnode_mqtt_external_outbox", "Messages waiting for the external broker", value=x.waiting
        )
        yield CounterMetricFamily(
            "vnode_mqtt_external_dropped", "Messages dropped from a full outbox", value=x.stats.dropped
        )
    if c.twins is not None:
        t = c.twins
        yield GaugeMetricFamily(
            "vnode_device_twins_devices", "Devices with twins on this node", value=len(t.devices)
        )
        yield CounterMetricFamily(
            "vnode_device_twins_requests", "Device requests handled", value=t.stats.handled
        )
        yield CounterMetricFamily(
            "vnode_device_twins_errors", "Error results published", value=t.stats.errors
        )
        yield CounterMetricFamily(
            "vnode_device_twins_dropped", "Device messages dropped", value=t.stats.dropped
        )
        yield CounterMetricFamily(
            "vnode_device_twins_uploads",
            "Messages for KubeEdge's cloud, counted, not forwarded",
            value=t.stats.uploads,
        )


def _readings(c: Components) -> None:
    """The scrape-time gauges of ``/metrics``, each read from the state's owner."""

    def running_pods() -> int:
        return sum(1 for w in c.pods.workers() if (s := w.last_observed.sandbox) is not None and s.ready)

    def containers_by_state() -> dict[str, int]:
        states = Counter(
            obs.state.value for w in c.pods.workers() for obs in w.last_observed.all_containers()
        )
        return dict(states)

    def link_online() -> bool | None:
        return None if c.node is None else c.node.offline_since is None

    def backlog() -> int | None:
        return c.event_poster.backlog if c.event_poster is not None else None

    c.metrics.add_readings(
        NodeReadings(
            running_pods=running_pods,
            containers_by_state=containers_by_state,
            link_online=link_online,
            offline_seconds=lambda: c.node.offline_seconds() if c.node is not None else 0.0,
            store_info=c.store.info,
            events_backlog=backlog,
            extra=[lambda: _event_bus_metrics(c)],
        )
    )
    starts = PodStartTracker(c.metrics.pod_started)

    def status_changed(uid: str) -> None:
        known = c.pods.status_of(uid)
        starts.status(uid, known[1] if known is not None else None, datetime.now(tz=UTC))

    c.pods.add_listener(status_changed)


def _rotator(
    settings: Settings, c: Components, masters: Masters, host_ip: str
) -> rotation.CertificateRotator | None:
    """Client rotation for a joined node's certificate, serving rotation unless files are configured."""
    rotator = rotation.CertificateRotator(
        masters,
        settings.pki_dir,
        settings.node.name,
        c.events.event,
        node_uid=lambda: c.node.uid if c.node is not None else None,
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
        rotator.rotate_serving(c.ssl_context, lambda: ([settings.node.name], ips))
    return rotator if rotator.kinds else None


def _node_controller(settings: Settings, c: Components, host_ip: str) -> NodeController:
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
        version = await c.cri.version()
        return f"{version.runtime_name}://{version.runtime_version}"

    assert c.masters is not None
    return NodeController(
        c.masters,
        identity,
        runtime_version=runtime_version,
        runtime_problem=lambda: c.pods.runtime_error,
        report_frequency=settings.cluster.node_status_report_frequency,
        on_deleted=settings.cluster.on_node_deleted,
        store=c.store,
        offline_summary=lambda since: offline_summary(c, since),
        record_event=c.events.event,
        store_problem=lambda: c.pods.store_problem,
        pressure=c.pressure.conditions if c.pressure is not None else lambda: list(node_pressure.NO_PRESSURE),
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


def offline_summary(c: Components, since: datetime) -> str:
    """What the node's Events say happened since ``since``, by reason, and what was dropped."""
    reasons = Counter(e.reason for e in c.events.events if e.time >= since and e.kind == "Pod")
    parts = [f"{reason} x{count}" for reason, count in sorted(reasons.items())]
    dropped = c.event_poster.dropped if c.event_poster is not None else 0
    return ", ".join(parts or ["no pod events"]) + (f"; {dropped} events dropped" if dropped else "")


async def _build_with_store(
    settings: Settings,
    store: Store,
    host_ip: str,
    ssl_context: ssl.SSLContext,
    objects: ObjectCache | None,
    metrics: NodeMetrics,
    kubelet_guard: Any,
) -> Components:
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
    return Components(
        settings=settings,
        store=store,
        cri=cri,
        events=events,
        pods=pods,
        manifests=manifests,
        ssl_context=ssl_context,
        kubelet_handlers=handlers,
        healthz_handlers=healthz_handlers,
        stats=stats,
        metrics=metrics,
        prober=prober,
    )
