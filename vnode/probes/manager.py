"""The prober: every probe of every pod, on one scheduler of ticks.

The pod workers tell it what they observe (``update``: the pod, its containers' IDs and states);
it keeps one ``ProbeMachine`` per (pod, container, probe type), runs each when due with the
handlers, and tells its subscriber what changed: ``Changed(uid)`` when a published result moved
(the pod's status must be computed again), ``Kill(...)`` when a liveness or startup probe failed
past its threshold. The pod worker does the kill, with the probe's grace period, so the restart
policy and the crash-loop back-off apply as to any exit.

Timing: one task sleeps until the earliest due probe; each probe is due ``periodSeconds`` after
its last due time (not after it ended, so a slow probe does not make the period drift), at most
one run per probe in flight; a new container is probed once its initial delay has passed. Cost
does not grow with a loop per probe: 200 pods with two probes each are 400 heap entries.

``/metrics/probes``: ``prober_probe_total`` (``probe_type``, ``result``, ``container``, ``pod``,
``namespace``, ``pod_uid``) and ``prober_probe_duration_seconds``, in a registry of their own;
a probe's series go when its worker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from vnode.probes.handlers import Container, Handlers, Outcome, ProbeError
from vnode.probes.machine import ProbeMachine, Step, Target
from vnode.probes.spec import ProbeSpec, ProbeType, Result, probe_spec

log = logging.getLogger(__name__)

RETRIES = 3  # kubelet's maxProbeRetries, for a probe that errors
RESTART_GRACE = timedelta(seconds=10)  # containers started this long before vnode keep their state
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class Changed:
    uid: str


@dataclass(frozen=True)
class Kill:
    uid: str
    container: str
    container_id: str
    grace: int | None  # the probe's terminationGracePeriodSeconds; None: the pod's
    message: str  # the Killing Event's


ProbeEvent = Changed | Kill


@dataclass(frozen=True)
class Key:
    uid: str
    container: str
    kind: ProbeType


@dataclass
class _Worker:
    key: Key
    machine: ProbeMachine
    pod: dict[str, Any]
    container: dict[str, Any]
    target: Target | None = None
    pod_ip: str = ""
    due: float = 0.0
    busy: bool = False
    labels: tuple[str, str, str, str] = ("", "", "", "")  # container, pod, namespace, pod_uid


@dataclass
class ContainerView:
    """One container of a pod as the pod worker observed it (the input of ``update``)."""

    target: Target  # its ``started`` is the prober's to fill in (see ``update``)
    spec: dict[str, Any]
    previously_started: bool = False  # as last reported, for a container older than vnode


@dataclass
class _Metrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        self.total = Counter(
            "prober_probe_total",
            "Cumulative number of a liveness, readiness or startup probe for a container by result.",
            ["probe_type", "result", "container", "pod", "namespace", "pod_uid"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "prober_probe_duration_seconds",
            "Duration in seconds for a probe response.",
            ["probe_type", "container", "pod", "namespace"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )


class Prober:
    """See the module docstring. ``clock`` is monotonic seconds, ``now`` the wall clock."""

    def __init__(
        self,
        handlers: Handlers,
        record_event: Callable[[dict[str, Any], str, str, str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(tz=UTC),
    ) -> None:
        self.handlers = handlers
        self.record_event = record_event
        self.clock = clock
        self.now = now
        self.restarted_before = now() - RESTART_GRACE
        self._workers: dict[Key, _Worker] = {}
        self._heap: list[tuple[float, int, Key]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._subscribers: list[Callable[[ProbeEvent], None]] = []
        self._metrics = _Metrics()
        self.probes_run = 0

    def subscribe(self, callback: Callable[[ProbeEvent], None]) -> None:
        self._subscribers.append(callback)

    # -- what the pod workers say ------------------------------------------------------------

    def update(
        self, pod: dict[str, Any], pod_ip: str, containers: dict[str, ContainerView], *, terminal: bool
    ) -> None:
        """The pod as just observed; ``containers`` by name (init sidecars and regular ones)."""
        uid = pod["metadata"]["uid"]
        wanted: set[Key] = set()
        if not terminal:
            for name, view in containers.items():
                # The startup probe first: whether the container has started gates the others.
                for kind in (ProbeType.STARTUP, ProbeType.LIVENESS, ProbeType.READINESS):
                    spec = probe_spec(view.spec, kind)
                    if spec is None:
                        continue
                    key = Key(uid, name, kind)
                    wanted.add(key)
                    target = replace(view.target, started=self._has_started(uid, name, view))
                    self._see(key, spec, pod, pod_ip, replace(view, target=target))
        for key in [k for k in self._workers if k.uid == uid and k not in wanted]:
            self._remove(key)

    def _has_started(self, uid: str, name: str, view: ContainerView) -> bool:
        """kubelet's isContainerStarted: running, and past its startup probe if it has one."""
        target = view.target
        if not target.running:
            return False
        if probe_spec(view.spec, ProbeType.STARTUP) is None:
            return True
        started = self.started(uid, name, target.container_id, view.previously_started)
        if started is None:  # its startup worker is made just now
            older = target.started_at is not None and target.started_at < self.restarted_before
            return older and view.previously_started  # started before vnode did: not probed again
        return started

    def forget(self, uid: str) -> None:
        """The pod is gone: stop its probes and drop their series."""
        for key in [k for k in self._workers if k.uid == uid]:
            self._remove(key)

    def _see(self, key: Key, spec: ProbeSpec, pod: dict[str, Any], pod_ip: str, view: ContainerView) -> None:
        worker = self._workers.get(key)
        if worker is None or worker.machine.spec != spec:
            if worker is not None:
                self._remove(key)
            meta = pod.get("metadata") or {}
            worker = self._workers[key] = _Worker(
                key,
                ProbeMachine(spec),
                pod,
                view.spec,
                labels=(
                    key.container,
                    str(meta.get("name", "")),
                    str(meta.get("namespace", "default")),
                    key.uid,
                ),
            )
            self._schedule(worker, self.clock())
        previous_id = worker.machine.container_id
        worker.pod, worker.container, worker.pod_ip, worker.target = pod, view.spec, pod_ip, view.target
        step = worker.machine.step(view.target, self.now(), restarted_before=self.restarted_before)
        if step == Step.STOP:
            self._remove(key)
            return
        if view.target.container_id != previous_id and view.target.started_at is not None:
            # A new container: probe it once its initial delay has passed, not a period later.
            delay = spec.initial_delay - (self.now() - view.target.started_at).total_seconds()
            self._schedule(worker, self.clock() + max(0.0, delay))

    def _remove(self, key: Key) -> None:
        worker = self._workers.pop(key, None)
        if worker is None:
            return
        kind = key.kind.value
        for result in Result:
            with contextlib.suppress(KeyError):
                self._metrics.total.remove(kind, result.value, *worker.labels)
        with contextlib.suppress(KeyError):
            self._metrics.duration.remove(kind, *worker.labels[:3])

    # -- what the status computation asks ----------------------------------------------------

    def started(self, uid: str, container: str, container_id: str, previously: bool) -> bool | None:
        """Whether the startup probe let ``container_id`` start; None when it has no startup probe.
        ``previously``: the last reported ``started``, kept for a container older than vnode."""
        worker = self._workers.get(Key(uid, container, ProbeType.STARTUP))
        if worker is None:
            return None
        return self._resolve(worker, container_id, previously)

    def ready(self, uid: str, container: str, container_id: str, previously: bool) -> bool | None:
        """Whether the readiness probe passes for ``container_id``; None without a readiness probe."""
        worker = self._workers.get(Key(uid, container, ProbeType.READINESS))
        if worker is None:
            return None
        return self._resolve(worker, container_id, previously)

    @staticmethod
    def _resolve(worker: _Worker, container_id: str, previously: bool) -> bool:
        machine = worker.machine
        if machine.container_id != container_id:
            return False
        if machine.result is None:  # running since before vnode started, not probed yet
            return previously
        return machine.result == Result.SUCCESS

    # -- running probes ----------------------------------------------------------------------

    def _schedule(self, worker: _Worker, due: float) -> None:
        worker.due = due
        heapq.heappush(self._heap, (due, next(self._seq), worker.key))
        self._wake.set()

    async def run(self) -> None:
        """The scheduler: runs due probes until cancelled (then cancels the ones in flight)."""
        try:
            while True:
                self._wake.clear()
                self.tick()
                delay = self._heap[0][0] - self.clock() if self._heap else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        finally:
            for task in list(self._running):
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)
            await self.handlers.close()

    def tick(self) -> None:
        """Start every probe that is due now."""
        now = self.clock()
        while self._heap and self._heap[0][0] <= now:
            due, _, key = heapq.heappop(self._heap)
            worker = self._workers.get(key)
            if worker is None or worker.due != due:
                continue  # removed, or rescheduled since
            period = worker.machine.spec.period
            self._schedule(worker, due + period if due + period > now else now + period)
            if worker.busy or worker.target is None:
                continue
            step = worker.machine.step(worker.target, self.now(), restarted_before=self.restarted_before)
            if step == Step.STOP:
                self._remove(key)
            elif step == Step.PROBE:
                worker.busy = True
                task = asyncio.create_task(
                    self._probe(worker), name=f"probe-{key.kind.value}-{key.container}"
                )
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def drain(self) -> None:
        """Wait for the probes in flight (tests)."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    async def _probe(self, worker: _Worker) -> None:
        key, spec = worker.key, worker.machine.spec
        target = worker.target
        assert target is not None
        container = Container(target.container_id, worker.pod_ip, worker.container)
        started = time.perf_counter()
        try:
            outcome: Outcome | None = None
            error: ProbeError | None = None
            for _ in range(RETRIES):
                try:
                    outcome = await self.handlers.run(spec, container)
                    break
                except ProbeError as exc:
                    error = exc
            self.probes_run += 1
            if self._workers.get(key) is not worker or worker.machine.container_id != target.container_id:
                return  # the worker went, or its container changed, while the probe ran
            if outcome is None:
                self._event(
                    worker,
                    "Unhealthy",
                    f"{key.kind.value} probe errored and resulted in unknown state: {error}",
                )
                return  # thrown away, as kubelet does: no threshold and no series counts it
            self._count(worker, outcome, time.perf_counter() - started)
            if outcome.result == Result.FAILURE:
                self._event(worker, "Unhealthy", f"{key.kind.value} probe failed: {outcome.output}")
            elif outcome.warning:
                self._event(worker, "ProbeWarning", f"{key.kind.value} probe warning: {outcome.output}")
            before = worker.machine.result
            if worker.machine.record(outcome.result):
                self._published(worker, before)
        finally:
            worker.busy = False

    def _count(self, worker: _Worker, outcome: Outcome, seconds: float) -> None:
        kind = worker.key.kind.value
        self._metrics.total.labels(kind, outcome.result.value, *worker.labels).inc()
        if outcome.result == Result.SUCCESS:
            self._metrics.duration.labels(kind, *worker.labels[:3]).observe(seconds)

    def _published(self, worker: _Worker, before: Result | None) -> None:
        key, machine = worker.key, worker.machine
        if machine.result == Result.FAILURE and key.kind in (ProbeType.LIVENESS, ProbeType.STARTUP):
            message = f"Container {key.container} failed {key.kind.value.lower()} probe, will be restarted"
            log.info("pod %s: %s", worker.labels[1], message)
            self._emit(
                Kill(key.uid, key.container, machine.container_id, machine.spec.termination_grace, message)
            )
            return
        if machine.result != before:
            if key.kind == ProbeType.STARTUP and machine.result == Result.SUCCESS:
                # started: the other probes of this container run from now on
                for kind in (ProbeType.LIVENESS, ProbeType.READINESS):
                    other = self._workers.get(Key(key.uid, key.container, kind))
                    if other is not None and other.target is not None:
                        other.target = replace(other.target, started=other.target.running)
                        self._schedule(other, self.clock())
            self._emit(Changed(key.uid))

    def _event(self, worker: _Worker, reason: str, message: str) -> None:
        self.record_event(worker.pod, "Warning", reason, message)

    def _emit(self, event: ProbeEvent) -> None:
        for callback in self._subscribers:
            callback(event)

    def render(self) -> bytes:
        """``/metrics/probes`` in the Prometheus text format."""
        return generate_latest(self._metrics.registry)
