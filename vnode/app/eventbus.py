"""Wiring of the event bus: vnode's MQTT broker, its clients of an external broker, the device
twins on them, and the counters they export.

Kept apart from the rest of the wiring (``vnode.app.wiring``) because it is optional and heavy:
the MQTT and device modules are imported here only, and only when ``eventBus.enable`` is on (a
node without the bus never loads them), and its TLS and addresses come from settings of its own.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from vnode import errors
from vnode.clients.masters import Masters
from vnode.config.settings import Settings
from vnode.store import Store

if TYPE_CHECKING:  # imported at run time only when the event bus is enabled
    from vnode.devices.twins import DeviceTwins
    from vnode.devices.watch import DeviceWatch
    from vnode.mqtt.broker import Broker
    from vnode.mqtt.client import ExternalBus


@dataclass(frozen=True)
class EventBus:
    """The bus of the configured mode and what runs on it."""

    twins: DeviceTwins  # KubeEdge-compatible device twins on the event bus
    mqtt: Broker | None = None  # vnode's own MQTT broker (eventBus.mqttMode 0 or 1)
    mqtt_external: ExternalBus | None = None  # vnode's clients of an external broker (modes 1, 2)
    device_watch: DeviceWatch | None = None  # the node's KubeEdge Devices, with a control plane


def mqtt_address(server: str) -> tuple[str, int]:
    """Host and port of an eventBus server URL (``tcp://host:port``, checked by the loader)."""
    host, _, port = server.split("://", 1)[1].rpartition(":")
    return host.strip("[]"), int(port)


async def build_event_bus(settings: Settings, store: Store, masters: Masters | None) -> EventBus:
    """The event bus of the configured mode and the device twins on it; MQTT's modules are
    imported only here."""
    from vnode.devices.twins import Bus, DeviceTwins, Reports
    from vnode.devices.watch import DeviceWatch
    from vnode.mqtt.client import ExternalBus, FanoutBus

    bus = settings.event_bus
    mqtt = await _mqtt_broker(settings, store) if bus.internal else None
    external = None
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
        external = ExternalBus(
            host,
            port,
            store,
            sub_client_id=bus.mqtt_sub_client_id or f"hub-client-sub-{settings.node.name}",
            pub_client_id=bus.mqtt_pub_client_id or f"hub-client-pub-{settings.node.name}",
            credentials=(bus.mqtt_username, bus.mqtt_password) if bus.mqtt_username else None,
            ssl_context=context,
        )
    on: Bus
    if mqtt is not None and external is not None:
        on = FanoutBus(mqtt, external)
    elif mqtt is not None:
        on = mqtt
    else:
        assert external is not None
        on = external
    reports = Reports() if masters is not None else None
    twins = DeviceTwins(
        store, on, settings.node.name, qos=bus.mqtt_qos, retain=bus.mqtt_retain, reports=reports
    )
    watch = None
    if masters is not None and reports is not None:
        watch = DeviceWatch(masters, twins, reports, settings.node.name)
    return EventBus(twins=twins, mqtt=mqtt, mqtt_external=external, device_watch=watch)


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


def event_bus_metrics(bus: EventBus) -> Iterable[Metric]:
    """The broker's, the external clients' and the twins' counters."""
    if bus.mqtt is not None:
        s = bus.mqtt.stats
        yield GaugeMetricFamily(
            "vnode_mqtt_clients_connected", "Clients connected to vnode's broker", value=bus.mqtt.connected
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
    if bus.mqtt_external is not None:
        x = bus.mqtt_external
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
    t = bus.twins
    yield GaugeMetricFamily(
        "vnode_device_twins_devices", "Devices with twins on this node", value=len(t.devices)
    )
    yield CounterMetricFamily("vnode_device_twins_requests", "Device requests handled", value=t.stats.handled)
    yield CounterMetricFamily("vnode_device_twins_errors", "Error results published", value=t.stats.errors)
    yield CounterMetricFamily("vnode_device_twins_dropped", "Device messages dropped", value=t.stats.dropped)
    yield CounterMetricFamily(
        "vnode_device_twins_uploads",
        "Messages for KubeEdge's cloud, counted, not forwarded",
        value=t.stats.uploads,
    )
