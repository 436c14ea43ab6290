"""The probe state machine and the prober, on a fake clock with scripted handlers (milliseconds).

What kubelet users rely on: results published only past their thresholds, startup gating, errors
counted toward neither threshold, the initial results per container, the initial delay, a
liveness kill with the probe's own grace period and kubelet's messages, readiness feeding the
pod's conditions with kubelet's reasons, and the ``/metrics/probes`` series.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from vnode.probes.handlers import Container, Outcome, ProbeError, expand_command, resolve_port
from vnode.probes.machine import ProbeMachine, Step, Target
from vnode.probes.manager import Changed, ContainerView, Kill, ProbeEvent, Prober
from vnode.probes.spec import ProbeSpec, ProbeType, Result, probe_spec, problems
from vnode.provider.types import (
    ContainerObservation,
    ContainerState,
    PodObservation,
    ProbeState,
    SandboxObservation,
)
from vnode.runtime.status import compute_pod_status

T0 = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


def running(container_id: str = "c1", *, started: bool = True, at: datetime = T0) -> Target:
    return Target(container_id, True, at, started, will_restart=True, deleting=False)


def spec(kind: ProbeType, **fields: Any) -> ProbeSpec:
    return ProbeSpec(kind, "exec", {"command": ["true"]}, **fields)


# -- the state machine --------------------------------------------------------------------------


def test_initial_results_per_new_container() -> None:
    now = T0 + timedelta(seconds=5)
    for kind, initial in (
        (ProbeType.READINESS, Result.FAILURE),
        (ProbeType.LIVENESS, Result.SUCCESS),
        (ProbeType.STARTUP, Result.UNKNOWN),
    ):
        machine = ProbeMachine(spec(kind))
        machine.step(running(started=kind != ProbeType.STARTUP), now)
        assert machine.result == initial
        machine.record(Result.SUCCESS if initial != Result.SUCCESS else Result.FAILURE)
        machine.step(running("c2", started=kind != ProbeType.STARTUP), now)  # a new container
        assert machine.result == initial and machine.run == 0


def test_a_result_is_published_only_past_its_threshold() -> None:
    machine = ProbeMachine(spec(ProbeType.READINESS, success_threshold=2, failure_threshold=3))
    assert machine.step(running(), T0) == Step.PROBE
    assert not machine.record(Result.SUCCESS) and machine.result == Result.FAILURE
    assert machine.record(Result.SUCCESS) and machine.result == Result.SUCCESS
    assert not machine.record(Result.FAILURE)
    assert not machine.record(Result.FAILURE)
    assert machine.result == Result.SUCCESS
    assert machine.record(Result.FAILURE) and machine.result == Result.FAILURE


def test_startup_gates_the_other_probes_and_stops_once_passed() -> None:
    startup = ProbeMachine(spec(ProbeType.STARTUP))
    liveness = ProbeMachine(spec(ProbeType.LIVENESS))
    not_started = running(started=False)
    assert startup.step(not_started, T0) == Step.PROBE
    assert liveness.step(not_started, T0) == Step.WAIT
    assert startup.record(Result.SUCCESS)
    assert startup.step(running(started=True), T0) == Step.WAIT  # held until a new container
    assert liveness.step(running(started=True), T0) == Step.PROBE


def test_nothing_runs_before_the_initial_delay_or_on_a_stopped_container() -> None:
    machine = ProbeMachine(spec(ProbeType.LIVENESS, initial_delay=15))
    assert machine.step(running(), T0 + timedelta(seconds=14)) == Step.WAIT
    assert machine.step(running(), T0 + timedelta(seconds=15)) == Step.PROBE
    stopped = Target("c1", False, T0, False, will_restart=True, deleting=False)
    assert machine.step(stopped, T0 + timedelta(seconds=20)) == Step.WAIT
    assert machine.result == Result.FAILURE
    done = Target("c1", False, T0, False, will_restart=False, deleting=False)
    assert machine.step(done, T0 + timedelta(seconds=20)) == Step.STOP


def test_during_deletion_liveness_stops_quietly_and_readiness_goes_on() -> None:
    deleting = Target("c1", True, T0, True, will_restart=True, deleting=True)
    liveness = ProbeMachine(spec(ProbeType.LIVENESS))
    assert liveness.step(deleting, T0) == Step.STOP and liveness.result == Result.SUCCESS
    assert ProbeMachine(spec(ProbeType.READINESS)).step(deleting, T0) == Step.PROBE


def test_a_container_older_than_vnode_keeps_its_state_until_probed() -> None:
    machine = ProbeMachine(spec(ProbeType.READINESS))
    machine.step(running(at=T0), T0 + timedelta(minutes=5), restarted_before=T0 + timedelta(minutes=1))
    assert machine.result is None  # the prober answers with what was reported before
    machine.record(Result.FAILURE)
    machine.record(Result.FAILURE)
    assert machine.record(Result.FAILURE) and machine.result == Result.FAILURE


# -- handlers' pure parts ------------------------------------------------------------------------


def test_named_ports_and_static_env_in_exec_commands() -> None:
    container = {
        "name": "web",
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [{"name": "F", "value": "/ok"}],
    }
    assert resolve_port("http", container) == 8080
    assert resolve_port(81, container) == 81
    with pytest.raises(ProbeError, match="couldn't find port"):
        resolve_port("grpc", container)
    assert expand_command(["cat", "$(F)", "$$(F)"], container) == ["cat", "/ok", "$(F)"]


def test_probe_specs_default_and_bad_ones_are_named() -> None:
    parsed = probe_spec({"livenessProbe": {"tcpSocket": {"port": 80}}}, ProbeType.LIVENESS)
    assert parsed is not None
    numbers = (parsed.period, parsed.timeout, parsed.success_threshold, parsed.failure_threshold)
    assert (parsed.handler, numbers) == ("tcpSocket", (10, 1, 1, 3))
    bad = {
        "livenessProbe": {"exec": {"command": ["x"]}, "httpGet": {"port": 1}, "successThreshold": 2},
        "readinessProbe": {"periodSeconds": -1, "tcpSocket": {}},
        "startupProbe": {},
    }
    found = problems(bad, "spec.containers[0]")
    assert (
        "spec.containers[0].livenessProbe.httpGet: Forbidden: may not specify more than 1 handler type"
        in found
    )
    assert "spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1" in found
    assert any(
        p.startswith("spec.containers[0].readinessProbe.periodSeconds: Invalid value: -1") for p in found
    )
    assert "spec.containers[0].readinessProbe.tcpSocket.port: Required value" in found
    assert "spec.containers[0].startupProbe: Required value: must specify a handler type" in found


# -- the prober ----------------------------------------------------------------------------------


class Script:
    """Handlers that answer from a queue of outcomes (or errors), recording each call."""

    def __init__(self, *answers: Outcome | ProbeError) -> None:
        self.answers = deque(answers)
        self.calls: list[tuple[ProbeType, str]] = []

    async def run(self, spec: ProbeSpec, target: Container) -> Outcome:
        self.calls.append((spec.kind, target.container_id))
        answer = self.answers.popleft()
        if isinstance(answer, ProbeError):
            raise answer
        return answer

    async def close(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.seconds - 1000.0)


POD = {"metadata": {"name": "web", "namespace": "default", "uid": "u1"}}


def prober_with(script: Script) -> tuple[Prober, Clock, list[Any], list[ProbeEvent]]:
    clock = Clock()
    events: list[Any] = []
    told: list[ProbeEvent] = []
    prober = Prober(
        script,  # type: ignore[arg-type]
        lambda obj, type_, reason, message: events.append((type_, reason, message)),
        clock=clock,
        now=clock.wall,
    )
    prober.subscribe(told.append)
    return prober, clock, events, told


async def advance(prober: Prober, clock: Clock, seconds: float) -> None:
    clock.seconds += seconds
    prober.tick()
    await prober.drain()


FAIL = Outcome(Result.FAILURE, "cat: can't open '/tmp/healthy': No such file or directory")
OK = Outcome(Result.SUCCESS, "")


async def test_liveness_failure_kills_with_the_probes_grace_and_kubelets_messages() -> None:
    script = Script(OK, FAIL, FAIL)
    prober, clock, events, told = prober_with(script)
    container = {
        "name": "main",
        "livenessProbe": {
            "exec": {"command": ["cat", "/tmp/healthy"]},
            "periodSeconds": 5,
            "failureThreshold": 2,
            "terminationGracePeriodSeconds": 3,
        },
    }
    prober.update(
        POD, "10.0.0.5", {"main": ContainerView(running(at=clock.wall()), container)}, terminal=False
    )
    await advance(prober, clock, 0)
    await advance(prober, clock, 5)
    assert told == []  # one failure: below the threshold
    await advance(prober, clock, 5)
    message = "Container main failed liveness probe, will be restarted"
    assert told == [Kill("u1", "main", "c1", 3, message)]
    assert events == [("Warning", "Unhealthy", f"Liveness probe failed: {FAIL.output}")] * 2
    await advance(prober, clock, 5)
    assert len(script.calls) == 3  # on hold until the restarted container shows up


async def test_a_startup_failure_kills_and_a_redirect_elsewhere_warns() -> None:
    moved = Outcome(Result.SUCCESS, "Probe terminated redirects, Response body: moved", warning=True)
    script = Script(FAIL, moved)
    prober, clock, events, told = prober_with(script)
    container = {
        "name": "main",
        "startupProbe": {"exec": {"command": ["cat", "/tmp/healthy"]}, "failureThreshold": 1},
        "readinessProbe": {"httpGet": {"port": 80}},
    }
    started = running(started=False, at=clock.wall())
    prober.update(POD, "10.0.0.5", {"main": ContainerView(started, container)}, terminal=False)
    await advance(prober, clock, 0)
    message = "Container main failed startup probe, will be restarted"
    assert told == [Kill("u1", "main", "c1", None, message)]  # no probe-level grace: the pod's
    assert events == [("Warning", "Unhealthy", f"Startup probe failed: {FAIL.output}")]

    # the restarted container passes (no startup probe in this spec); readiness meets a redirect
    del container["startupProbe"]
    prober.update(
        POD, "10.0.0.5", {"main": ContainerView(running("c2", at=clock.wall()), container)}, terminal=False
    )
    await advance(prober, clock, 0)
    assert events[-1] == ("Warning", "ProbeWarning", f"Readiness probe warning: {moved.output}")
    assert prober.ready("u1", "main", "c2", previously=False) is True  # a warning is a success


async def test_probe_times_keep_to_the_period_when_a_tick_comes_late() -> None:
    script = Script(OK, OK, OK, OK)
    prober, clock, _, _ = prober_with(script)
    container = {"name": "main", "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 10}}
    prober.update(
        POD, "10.0.0.5", {"main": ContainerView(running(at=clock.wall()), container)}, terminal=False
    )
    await advance(prober, clock, 0)
    await advance(prober, clock, 13)  # the loop was late by 3 s
    assert len(script.calls) == 2
    await advance(prober, clock, 7)  # due at 20 s, not 23 s: no drift
    assert len(script.calls) == 3
    await advance(prober, clock, 9.5)
    assert len(script.calls) == 3


async def test_errors_count_toward_neither_threshold() -> None:
    script = Script(ProbeError("couldn't find port 'http'"), ProbeError("x"), ProbeError("x"), OK)
    prober, clock, events, told = prober_with(script)
    container = {"name": "main", "readinessProbe": {"httpGet": {"port": "http"}}}
    prober.update(
        POD, "10.0.0.5", {"main": ContainerView(running(at=clock.wall()), container)}, terminal=False
    )
    await advance(prober, clock, 0)
    assert events == [("Warning", "Unhealthy", "Readiness probe errored and resulted in unknown state: x")]
    assert prober.ready("u1", "main", "c1", previously=True) is False and told == []
    assert "prober_probe_total{" not in prober.render().decode()  # nor counted in /metrics/probes
    await advance(prober, clock, 10)
    assert prober.ready("u1", "main", "c1", previously=False) is True
    assert told == [Changed("u1")]


async def test_startup_holds_readiness_until_it_passes() -> None:
    script = Script(FAIL, OK, OK)
    prober, clock, _, told = prober_with(script)
    container = {
        "name": "main",
        "startupProbe": {"exec": {"command": ["ready"]}, "periodSeconds": 1, "failureThreshold": 30},
        "readinessProbe": {"exec": {"command": ["ready"]}},
    }

    def update() -> None:
        started = prober.started("u1", "main", "c1", previously=False)
        target = running(started=bool(started), at=T0)
        prober.update(POD, "10.0.0.5", {"main": ContainerView(target, container)}, terminal=False)

    update()
    await advance(prober, clock, 0)
    assert script.calls == [(ProbeType.STARTUP, "c1")]
    await advance(prober, clock, 1)
    assert prober.started("u1", "main", "c1", previously=False) is True
    assert told == [Changed("u1")]
    update()  # the pod worker, woken, tells the prober the container has started
    await advance(prober, clock, 0)
    assert script.calls[-1] == (ProbeType.READINESS, "c1")
    assert prober.ready("u1", "main", "c1", previously=False) is True


async def test_probes_series_carry_kubelets_labels_and_go_with_the_pod() -> None:
    prober, clock, _, _ = prober_with(Script(OK))
    container = {"name": "main", "readinessProbe": {"tcpSocket": {"port": 80}}}
    prober.update(
        POD, "10.0.0.5", {"main": ContainerView(running(at=clock.wall()), container)}, terminal=False
    )
    await advance(prober, clock, 0)
    text = prober.render().decode()
    assert (
        'prober_probe_total{container="main",namespace="default",pod="web",pod_uid="u1",'
        'probe_type="Readiness",result="successful"} 1.0'
    ) in text
    assert (
        'prober_probe_duration_seconds_count{container="main",namespace="default",pod="web",'
        'probe_type="Readiness"} 1.0' in text
    )
    prober.forget("u1")
    assert "pod_uid=" not in prober.render().decode()


# -- the pod's conditions ----------------------------------------------------------------------


def test_readiness_drives_the_conditions_with_kubelets_reasons() -> None:
    pod = {
        "metadata": {"name": "web", "uid": "u1"},
        "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x"}]},
    }
    containers = {
        n: [ContainerObservation(id=f"c-{n}", name=n, attempt=0, state=ContainerState.RUNNING, started_at=T0)]
        for n in ("a", "b")
    }
    sandbox = SandboxObservation(id="s", ready=True)
    obs = PodObservation(
        sandbox, containers, probes={"a": ProbeState(ready=False), "b": ProbeState(started=False)}
    )
    status = compute_pod_status(pod, obs, None, T0)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["reason"] == "ContainersNotReady"
    assert conditions["Ready"]["message"] == "containers with unready status: [a b]"
    by_name = {s["name"]: s for s in status["containerStatuses"]}
    assert (by_name["a"]["ready"], by_name["a"]["started"]) == (False, True)
    assert (by_name["b"]["ready"], by_name["b"]["started"]) == (False, False)
    ready = PodObservation(sandbox, containers, probes={"a": ProbeState(ready=True)})
    assert {c["type"]: c["status"] for c in compute_pod_status(pod, ready, None, T0)["conditions"]}[
        "Ready"
    ] == "True"
