"""One probe of one container: kubelet's per-probe state machine, with no I/O and no clock of its own.

The manager feeds it the container as last observed (``Target``) and the probe outcomes; it says
whether to probe now and which result stands. Per new container ID the result starts at the
type's initial value (``spec.INITIAL``). A container that is not running reads as Failure; while
a startup probe has not succeeded only it runs, after that only the others; nothing runs before
``initialDelaySeconds`` counted from the container's start. A result is published only after
``successThreshold`` / ``failureThreshold`` consecutive outcomes. After a published liveness
failure, or any published startup result, the worker holds until a new container ID: the
container is being restarted (or has started) and probing it meanwhile only adds noise.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from vnode.probes.spec import INITIAL, ProbeSpec, ProbeType, Result


@dataclass(frozen=True)
class Target:
    """The probed container as the pod worker last observed it."""

    container_id: str  # "" while none exists
    running: bool
    started_at: datetime | None
    started: bool  # whether the container counts as started (its startup probe, if any, passed)
    will_restart: bool  # a stopped container will run again (restart policy, back-off)
    deleting: bool  # the pod is being deleted


class Step(enum.Enum):
    PROBE = "probe"  # run the handler now
    WAIT = "wait"  # nothing to do this tick
    STOP = "stop"  # the worker is done for good


@dataclass
class ProbeMachine:
    spec: ProbeSpec
    container_id: str = ""
    result: Result | None = None  # the published result for ``container_id``
    last: Result | None = None  # the last outcome counted
    run: int = 0  # how many times in a row ``last`` came
    on_hold: bool = False

    def step(self, target: Target, now: datetime, *, restarted_before: datetime | None = None) -> Step:
        """What to do for ``target`` at ``now``; may change ``result`` (a new or stopped container).

        ``restarted_before``: vnode's own start less a grace; a container that was already running
        then keeps the result it had (None: no result yet) instead of the initial one, so that a
        restart of vnode does not flip a ready container to unready until it is probed."""
        kind = self.spec.kind
        if not target.container_id:
            return Step.WAIT
        if target.container_id != self.container_id:
            self.container_id = target.container_id
            self.last, self.run, self.on_hold = None, 0, False
            older = (
                restarted_before is not None
                and target.running
                and target.started_at is not None
                and target.started_at < restarted_before
            )
            self.result = None if older else INITIAL[kind]
        if self.on_hold:
            return Step.WAIT
        if not target.running:
            self.result = Result.FAILURE
            return Step.WAIT if target.will_restart else Step.STOP
        if target.deleting and kind in (ProbeType.LIVENESS, ProbeType.STARTUP):
            self.result = Result.SUCCESS  # a quiet shutdown: no kill during the pod's grace period
            return Step.STOP
        if (
            target.started_at is not None
            and (now - target.started_at).total_seconds() < self.spec.initial_delay
        ):
            return Step.WAIT
        if (kind == ProbeType.STARTUP) == target.started:
            return Step.WAIT  # startup runs only until started; the others only after
        return Step.PROBE

    def record(self, outcome: Result) -> bool:
        """Count one outcome (of a probe that did not error); True when the published result changed
        or was published again past its threshold (a liveness failure to act on)."""
        if outcome == self.last:
            self.run += 1
        else:
            self.last, self.run = outcome, 1
        threshold = self.spec.failure_threshold if outcome == Result.FAILURE else self.spec.success_threshold
        if outcome != Result.UNKNOWN and self.run < threshold:
            return False
        self.result = outcome
        if (
            self.spec.kind == ProbeType.LIVENESS and outcome == Result.FAILURE
        ) or self.spec.kind == ProbeType.STARTUP:
            self.on_hold, self.run = True, 0
        return True
