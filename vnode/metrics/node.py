"""``/metrics``: vnode's own Prometheus metrics, in one ``prometheus_client`` registry per node.

kubelet's names where kubelet has the metric (``kubelet_running_pods``,
``kubelet_running_containers``, ``kubelet_pod_start_duration_seconds``,
``kubelet_runtime_operations_total`` / ``_errors_total`` / ``_duration_seconds`` by
``operation_type``, ``rest_client_requests_total`` by ``code``, ``host`` and ``method``, and the
process metrics), vnode's own for what kubelet has not: the link to the control plane
(``vnode_link_online``, ``vnode_offline_seconds_total``), the store (``vnode_store_*``) and the
Event backlog (``vnode_events_backlog``). Counters are incremented by the code that does the work
(through the callbacks below, given at construction); gauges are read from their owners at scrape
time, so nothing here keeps a second copy of any state.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
START_BUCKETS = (0.5, 1, 2, 3, 4, 5, 6, 8, 10, 20, 30, 45, 60, 120, 180, 240, 300, 360, 480, 600)


def operation_type(rpc: str) -> str:
    """kubelet's label style for a CRI call: ``ListContainerStats`` -> ``list_container_stats``."""
    return _CAMEL.sub("_", rpc).lower()


@dataclass
class NodeReadings:
    """Where the scrape-time gauges come from; each callable belongs to the state's owner."""

    running_pods: Callable[[], int] = lambda: 0
    containers_by_state: Callable[[], dict[str, int]] = dict
    link_online: Callable[[], bool | None] = lambda: None  # None: standalone (not exported)
    offline_seconds: Callable[[], float] = lambda: 0.0
    store_info: Callable[[], dict[str, int]] = dict
    events_backlog: Callable[[], int | None] = lambda: None
    extra: list[Callable[[], Iterable[Metric]]] = field(default_factory=list)


class _Readings(Collector):
    def __init__(self, readings: NodeReadings) -> None:
        self.readings = readings

    def collect(self) -> Iterable[Metric]:
        r = self.readings
        yield GaugeMetricFamily("kubelet_running_pods", "Number of pods that have a running pod sandbox",
                                value=r.running_pods())  # fmt: skip
        containers = GaugeMetricFamily(
            "kubelet_running_containers", "Number of containers currently running", labels=["container_state"]
        )
        for state, count in sorted(r.containers_by_state().items()):
            containers.add_metric([state], count)
        yield containers
        online = r.link_online()
        if online is not None:
            yield GaugeMetricFamily(
                "vnode_link_online", "1 while a master answers, 0 while offline", value=int(online)
            )
            yield CounterMetricFamily(
                "vnode_offline_seconds", "Seconds this process has run without its control plane",
                value=r.offline_seconds(),
            )  # fmt: skip
        info = r.store_info()
        if info:
            yield GaugeMetricFamily("vnode_store_map_size_bytes", "Size of the store's LMDB map",
                                    value=info.get("map_size", 0))  # fmt: skip
            yield GaugeMetricFamily("vnode_store_used_bytes", "Bytes the store's pages occupy",
                                    value=info.get("used", 0))  # fmt: skip
            yield CounterMetricFamily("vnode_store_commits", "Write transactions committed by the store",
                                      value=info.get("commits", 0))  # fmt: skip
        backlog = r.events_backlog()
        if backlog is not None:
            yield GaugeMetricFamily("vnode_events_backlog", "Events waiting to be posted to the API server",
                                    value=backlog)  # fmt: skip
        for extra in r.extra:
            yield from extra()


class NodeMetrics:
    """The registry and the instruments the rest of the node reports through."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self.runtime_operations = Counter(
            "kubelet_runtime_operations", "Cumulative number of runtime operations by operation type.",
            ["operation_type"], registry=self.registry,
        )  # fmt: skip
        self.runtime_errors = Counter(
            "kubelet_runtime_operations_errors",
            "Cumulative number of runtime operation errors by operation type.",
            ["operation_type"], registry=self.registry,
        )  # fmt: skip
        self.runtime_duration = Histogram(
            "kubelet_runtime_operations_duration_seconds", "Duration in seconds of runtime operations.",
            ["operation_type"], buckets=DURATION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.rest_requests = Counter(
            "rest_client_requests", "Number of HTTP requests, partitioned by status code, method, and host.",
            ["code", "host", "method"], registry=self.registry,
        )  # fmt: skip
        self.pod_start = Histogram(
            "kubelet_pod_start_duration_seconds",
            "Duration in seconds from the node seeing the pod to its containers all running.",
            buckets=START_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def add_readings(self, readings: NodeReadings) -> None:
        """The scrape-time gauges, once their owners exist (the instruments above come first:
        the runtime and API clients are built with them)."""
        self.registry.register(_Readings(readings))

    def runtime_call(self, rpc: str, seconds: float, failed: bool) -> None:
        """The CRI client's hook: one call of ``rpc`` took ``seconds``."""
        op = operation_type(rpc)
        self.runtime_operations.labels(op).inc()
        self.runtime_duration.labels(op).observe(seconds)
        if failed:
            self.runtime_errors.labels(op).inc()

    def rest_request(self, method: str, host: str, code: str) -> None:
        """The API client's hook: one request answered ``code`` (``<error>`` when none came)."""
        self.rest_requests.labels(code, host, method).inc()

    def pod_started(self, seconds: float) -> None:
        self.pod_start.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class PodStartTracker:
    """``kubelet_pod_start_duration_seconds``: from a pod's ``startTime`` (the node first syncing
    it) to the first status with every container running; once per pod."""

    def __init__(self, observe: Callable[[float], None]) -> None:
        self.observe = observe
        self._seen: set[str] = set()

    def status(self, uid: str, status: dict[str, Any] | None, now: datetime) -> None:
        """A pod's status changed; None: the pod is gone (forgotten here too)."""
        if status is None:
            self._seen.discard(uid)
            return
        if uid in self._seen or not status.get("startTime"):
            return
        statuses = status.get("containerStatuses") or []
        if not statuses or not all("running" in (s.get("state") or {}) for s in statuses):
            return
        self._seen.add(uid)
        started = datetime.fromisoformat(str(status["startTime"]).replace("Z", "+00:00"))
        self.observe(max(0.0, (now - started).total_seconds()))
