"""Between a pod worker and the prober: the containers as observed go in, their probes' word on
each instance (``ProbeState``) comes out for the status computation."""

from __future__ import annotations

from typing import Any

from vnode.kube.restarts import should_restart
from vnode.probes.machine import Target
from vnode.probes.manager import ContainerView, Prober
from vnode.provider.types import ContainerState, ProbeState
from vnode.runtime.observation import Observed


def probe_states(
    prober: Prober,
    pod: dict[str, Any],
    observed: Observed,
    status: dict[str, Any] | None,
    pod_ip: str,
    *,
    deleting: bool,
    terminal: bool,
) -> dict[str, ProbeState]:
    """Tell ``prober`` what runs of ``pod`` now; ``status`` is the last one computed (what a
    container older than vnode said of itself)."""
    uid = pod["metadata"]["uid"]
    spec = pod.get("spec", {})
    policy = spec.get("restartPolicy", "Always")
    sidecars = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    before = status or {}
    previous = {
        s["name"]: s
        for s in [*(before.get("initContainerStatuses") or []), *(before.get("containerStatuses") or [])]
    }
    views: dict[str, ContainerView] = {}
    for container in [*sidecars, *(spec.get("containers") or [])]:
        name = container["name"]
        current = observed.current(name)
        cid = current.id if current is not None else ""
        running = current is not None and current.state == ContainerState.RUNNING
        restarts = container in sidecars or (
            current is not None and should_restart(policy, current.exit_code)
        )
        target = Target(
            container_id=cid,
            running=running,
            started_at=current.started_at if current is not None else None,
            started=running,  # the prober decides, from the startup probe if there is one
            will_restart=restarts and not terminal,
            deleting=deleting,
        )
        said = bool(previous.get(name, {}).get("started"))
        views[name] = ContainerView(target, container, previously_started=said)
    prober.update(pod, pod_ip, views, terminal=terminal)
    states = {}
    for name, view in views.items():
        last = previous.get(name, {})
        cid = view.target.container_id
        states[name] = ProbeState(
            started=prober.started(uid, name, cid, bool(last.get("started"))),
            ready=prober.ready(uid, name, cid, bool(last.get("ready"))),
        )
    return states
