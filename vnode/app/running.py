"""The composition root's lifecycle: start-up order, signals, bounded graceful shutdown.

Start-up never waits for anything remote: the store is opened, pods recorded in it get their
workers at once (they re-adopt running containers), the HTTPS API starts serving, and only then
do the relist and the pod sources run. Nothing here waits for containerd either: a missing
socket shows as an unhealthy ``runtime`` check on ``/healthz`` until containerd appears.

Every long-lived task is created in one ``asyncio.TaskGroup`` here; SIGTERM or SIGINT cancels it,
then the listeners close, the workers are cancelled (their containers keep running: restarting the
agent must never kill workloads) and the store is flushed and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from dataclasses import dataclass
from datetime import UTC, datetime

from vnode import __version__, errors
from vnode.api import local
from vnode.api.server import KubeletServer, Listener
from vnode.app import rootlock
from vnode.app.eventbus import mqtt_address
from vnode.app.notify import notify
from vnode.app.wiring import Components, build, serving_cert_path
from vnode.config.settings import Settings
from vnode.store import Put
from vnode.store.layout import META, META_RUN, RunRecord

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 10.0
M_ARENA_MAX = -8  # glibc's mallopt parameter number


@dataclass
class Node:
    """A running node: the components and the listeners serving them."""

    components: Components
    server: KubeletServer
    healthz: KubeletServer | None
    local: Listener | None = None

    async def serve(self, stop: asyncio.Event) -> None:
        """Run every long-lived task until ``stop`` is set (or one of them fails)."""
        c = self.components
        async with asyncio.TaskGroup() as group:
            group.create_task(c.pods.run(), name="relist")
            group.create_task(c.events.run(), name="event-log")
            group.create_task(c.prober.run(), name="prober")
            if c.manifests is not None:
                group.create_task(c.manifests.run(), name="static-pods")
            if c.node is not None:
                group.create_task(c.node.run(), name="node-status")
            if c.informer is not None:
                group.create_task(c.informer.run(), name="api-pods")
            if c.status_writer is not None:
                group.create_task(c.status_writer.run(), name="pod-status-writer")
            if c.event_poster is not None:
                group.create_task(c.event_poster.run(), name="event-poster")
            if c.pressure is not None:
                group.create_task(c.pressure.run(), name="pressure")
            if c.rotator is not None:
                group.create_task(c.rotator.run(), name="certificates")
            if c.openapi is not None:
                group.create_task(c.openapi.run(), name="openapi")
            if c.mqtt is not None:
                group.create_task(c.mqtt.serve(), name="mqtt-broker")
            if c.mqtt_external is not None:
                group.create_task(c.mqtt_external.run(), name="mqtt-external")
            if c.twins is not None:
                group.create_task(c.twins.run(), name="device-twins")
            if c.device_watch is not None:
                group.create_task(c.device_watch.run(), name="device-watch")
            await stop.wait()
            raise _Stop()


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of a (nested) group: task groups inside task groups nest their errors."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


class _Stop(Exception):
    """Raised inside the task group to cancel its tasks on a requested stop."""


async def start(settings: Settings) -> Node:
    """Build the components and open the listeners (HTTPS first, as the design orders it)."""
    components = await build(settings)
    server = KubeletServer(components.kubelet_handlers, name="kubelet")
    await server.start(settings.server.address, settings.server.port, components.ssl_context)
    log.info("kubelet API serving on https://%s:%d", settings.server.address, server.bound_port)
    healthz = None
    if settings.server.healthz_port:
        healthz = KubeletServer(components.healthz_handlers, name="healthz", setting="server.healthzPort")
        await healthz.start(settings.server.healthz_bind_address, settings.server.healthz_port, None)
    node = Node(components, server, healthz)
    if components.mqtt is not None:
        host, port = mqtt_address(settings.event_bus.mqtt_server_internal)
        try:
            bound = await components.mqtt.start(host, port)
        except OSError as exc:
            await shutdown(node)
            raise errors.CannotListen(
                "eventBus.mqttServerInternal", f"MQTT broker: cannot listen on {host}:{port}: {exc.strerror}"
            ) from exc
        log.info("MQTT broker (internal) serving on %s:%d", host, bound)
    if components.local_api is not None:
        node.local = await local.serve(
            components.local_api,
            settings.server.local_api_address,
            settings.server.local_api_port,
            components.ssl_context,
            serving_cert_path(settings),
            settings.local_kubeconfig_path,
        )
    return node


async def shutdown(node: Node) -> None:
    """Close listeners, cancel workers, flush the store; bounded by SHUTDOWN_TIMEOUT."""
    notify("STOPPING=1")
    async with asyncio.timeout(SHUTDOWN_TIMEOUT):
        if node.local is not None:
            await node.local.stop(timeout=2.0)
        await node.server.stop(timeout=2.0)
        if node.healthz is not None:
            await node.healthz.stop(timeout=1.0)
        await node.components.close()


async def main(settings: Settings) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        lock = rootlock.acquire(settings.root_dir)
    except rootlock.RootDirInUse as exc:
        log.error("%s", exc)
        return 4
    except OSError as exc:
        log.error("cannot start: cannot lock root dir %s: %s", settings.root_dir, exc)
        return 1
    try:
        return await _run_locked(settings, stop)
    finally:
        lock.release()


async def _run_locked(settings: Settings, stop: asyncio.Event) -> int:
    try:
        node = await start(settings)
    except errors.ConfigError as exc:
        log.error("config error: %s", exc)
        return 2
    except errors.CannotListen as exc:
        log.error("cannot listen: %s", exc)
        return 5
    except (errors.StoreError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    log.info("node %s started", settings.node.name)
    record = run_record(settings, node)
    await _record_run(node, record)
    notify(f"READY=1\nSTATUS=node {settings.node.name} serving")
    code = 0
    try:
        with contextlib.suppress(_Stop):
            try:
                await node.serve(stop)
            except* _Stop:
                pass
            except* errors.NodeDeleted as group:
                log.error("%s", _first_leaf(group))
                code = 3
    finally:
        log.info("stopping: containers keep running")
        await _record_run(node, {**record, "stopped": _now()})
        await shutdown(node)
    return code


def run_record(settings: Settings, node: Node) -> RunRecord:
    """This process as ``vnode status`` shows it: who runs, on which runtime, where it answers."""
    record: RunRecord = {
        "pid": os.getpid(),
        "started": _now(),
        "node": settings.node.name,
        "version": __version__,
        "runtimeEndpoint": settings.runtime.endpoint,
    }
    if node.healthz is not None:
        host = settings.server.healthz_bind_address
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        host = f"[{host}]" if ":" in host else host
        record["healthz"] = f"http://{host}:{node.healthz.bound_port}/healthz"
    return record


async def _record_run(node: Node, record: RunRecord) -> None:
    """Best effort: a full or failing store is reported by the store's own users, and must not
    stop the node from starting or stopping."""
    try:
        await node.components.store.write([Put(META, META_RUN, record)])
    except errors.StoreError as exc:
        log.warning("cannot record this run in the store: %s", exc)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas: idle arenas of the gRPC, store and I/O threads
    otherwise keep several MiB resident each for an agent that is mostly idle."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas)


def run(settings: Settings) -> int:
    """The ``vnode run`` entry point."""
    limit_malloc_arenas()
    return asyncio.run(main(settings))
