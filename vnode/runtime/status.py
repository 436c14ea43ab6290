"""The pod status, computed from the runtime's observation the way kubelet computes it.

A pure function of (pod spec, observation, previous status, now): kubelet's
generateAPIPodStatus, convertToAPIContainerStatuses and getPhase, with the probes' word on each
container (``ProbeState``: a running container is started unless its startup probe has not passed,
and ready once started unless its readiness probe fails). ``previous`` supplies what must
not move once set: ``startTime`` and the ``lastTransitionTime`` of conditions whose status did not
change, so that recomputing an unchanged pod yields an identical dict (and no write).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from vnode.kube.qos import qos_class
from vnode.provider.types import ContainerObservation, ContainerState, PodObservation, ProbeState, Waiting

RUNTIME = "containerd"


def _utc(value: datetime) -> str:
    """RFC 3339 with seconds, in UTC, as metav1.Time serialises (naive values are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def timestamp(value: datetime | None) -> str | None:
    return None if value is None else _utc(value)


def _terminated(c: ContainerObservation) -> dict[str, Any]:
    reason = c.reason or ("Completed" if c.exit_code == 0 else "Error")
    state: dict[str, Any] = {"exitCode": c.exit_code, "reason": reason}
    if c.message:
        state["message"] = c.message
    if c.started_at is not None:  # one that never started has none (not 0001-01-01)
        state["startedAt"] = timestamp(c.started_at)
    if c.finished_at is not None:
        state["finishedAt"] = timestamp(c.finished_at)
    state["containerID"] = f"{RUNTIME}://{c.id}"
    return state


def _state(c: ContainerObservation) -> dict[str, Any]:
    if c.state == ContainerState.RUNNING:
        return {"running": {"startedAt": timestamp(c.started_at)}}
    if c.state == ContainerState.EXITED:
        return {"terminated": _terminated(c)}
    if c.state == ContainerState.CREATED:
        return {"waiting": {"reason": "ContainerCreating"}}
    return {"waiting": {"reason": "ContainerStatusUnknown", "message": "The container state is unknown"}}


def _waiting(w: Waiting) -> dict[str, Any]:
    state: dict[str, Any] = {"reason": w.reason}
    if w.message:
        state["message"] = w.message
    return {"waiting": state}


def container_status(
    spec: dict[str, Any],
    instances: list[ContainerObservation],
    waiting: Waiting | None,
    *,
    init: bool,
    default_reason: str,
    probes: ProbeState | None = None,
) -> dict[str, Any]:
    """One entry of containerStatuses / initContainerStatuses."""
    sidecar = init and spec.get("restartPolicy") == "Always"
    newest = instances[0] if instances else None
    status: dict[str, Any] = {"name": spec["name"], "image": spec.get("image", ""), "imageID": ""}
    last: ContainerObservation | None = None
    if newest is not None and waiting is not None and newest.state != ContainerState.RUNNING:
        state = _waiting(waiting)
        last = newest if newest.state == ContainerState.EXITED else None
    elif newest is not None:
        state = _state(newest)
        last = next((c for c in instances[1:] if c.state == ContainerState.EXITED), None)
    else:
        state = _waiting(waiting or Waiting(default_reason))
    status["state"] = state
    status["lastState"] = {"terminated": _terminated(last)} if last is not None else {}
    running = "running" in state
    probes = probes or ProbeState()
    started = running and probes.started is not False
    if init and not sidecar:
        status["ready"] = "terminated" in state and state["terminated"]["exitCode"] == 0
    else:
        status["ready"] = started and probes.ready is not False
    status["restartCount"] = newest.attempt if newest is not None else 0
    status["started"] = started
    if newest is not None:
        status["imageID"] = newest.image_ref
        status["containerID"] = f"{RUNTIME}://{newest.id}"
    return status


def phase(pod: dict[str, Any], init_statuses: list[dict[str, Any]], statuses: list[dict[str, Any]]) -> str:
    """kubelet's getPhase."""
    spec = pod.get("spec", {})
    policy = spec.get("restartPolicy", "Always")
    pending_init = failed_init = 0
    for container, status in zip(spec.get("initContainers") or [], init_statuses, strict=True):
        if container.get("restartPolicy") == "Always":
            if "running" not in status["state"]:
                pending_init += 1
            continue
        state, last = status["state"], status["lastState"]
        if "terminated" in state:
            if state["terminated"]["exitCode"] != 0:
                failed_init += 1
        elif "waiting" in state and last.get("terminated", {}).get("exitCode", 0) != 0:
            failed_init += 1
            pending_init += 1
        else:
            pending_init += 1
    if failed_init and policy == "Never":
        return "Failed"
    if pending_init:
        return "Pending"
    waiting = running = stopped = succeeded = 0
    for status in statuses:
        state = status["state"]
        if "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            if state["terminated"]["exitCode"] == 0:
                succeeded += 1
        elif "terminated" in status["lastState"]:
            stopped += 1
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


def _condition(
    type_: str, ok: bool, previous: dict[str, dict[str, Any]], now: str, reason: str = "", message: str = ""
) -> dict[str, Any]:
    value = "True" if ok else "False"
    old = previous.get(type_)
    since = old["lastTransitionTime"] if old is not None and old.get("status") == value else now
    condition: dict[str, Any] = {
        "type": type_,
        "status": value,
        "lastProbeTime": None,
        "lastTransitionTime": since,
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def compute_pod_status(
    pod: dict[str, Any], obs: PodObservation, previous: dict[str, Any] | None, now: datetime
) -> dict[str, Any]:
    """The v1 PodStatus for ``pod`` as observed; see the module docstring."""
    spec = pod.get("spec", {})
    previous = previous or {}
    now_text = _utc(now)
    init_specs = spec.get("initContainers") or []
    specs = spec.get("containers") or []
    init_statuses = [
        container_status(
            c,
            obs.containers.get(c["name"], []),
            obs.waiting.get(c["name"]),
            init=True,
            default_reason="PodInitializing",
            probes=obs.probes.get(c["name"]),
        )
        for c in init_specs
    ]
    initialized = all(s["ready"] or ("running" in s["state"]) for s in init_statuses) and all(
        s["ready"]
        for c, s in zip(init_specs, init_statuses, strict=True)
        if c.get("restartPolicy") != "Always"
    )
    default_reason = "ContainerCreating" if initialized else "PodInitializing"
    statuses = [
        container_status(
            c,
            obs.containers.get(c["name"], []),
            obs.waiting.get(c["name"]),
            init=False,
            default_reason=default_reason,
            probes=obs.probes.get(c["name"]),
        )
        for c in specs
    ]
    pod_phase = phase(pod, init_statuses, statuses)
    old_conditions = {c["type"]: c for c in previous.get("conditions") or []}
    sandbox_ready = obs.sandbox is not None and obs.sandbox.ready
    sidecars = [
        s for c, s in zip(init_specs, init_statuses, strict=True) if c.get("restartPolicy") == "Always"
    ]
    unready = [s["name"] for s in [*sidecars, *statuses] if not s["ready"]]
    incomplete = [s["name"] for c, s in zip(init_specs, init_statuses, strict=True) if not s["ready"]]
    completed = pod_phase in ("Succeeded", "Failed")
    if completed:
        ready_reason, ready_message = ("PodCompleted" if pod_phase == "Succeeded" else "PodFailed"), ""
    elif unready:
        ready_reason, ready_message = (
            "ContainersNotReady",
            f"containers with unready status: [{' '.join(unready)}]",
        )
    else:
        ready_reason, ready_message = "", ""
    ready = not unready and not completed
    conditions = [
        _condition("PodReadyToStartContainers", sandbox_ready, old_conditions, now_text),
        _condition(
            "Initialized",
            initialized,
            old_conditions,
            now_text,
            "" if initialized else "ContainersNotInitialized",
            "" if initialized else f"containers with incomplete status: [{' '.join(incomplete)}]",
        ),
        _condition("Ready", ready, old_conditions, now_text, ready_reason, ready_message),
        _condition("ContainersReady", ready, old_conditions, now_text, ready_reason, ready_message),
        _condition("PodScheduled", True, old_conditions, now_text),
    ]
    status: dict[str, Any] = {
        "phase": pod_phase,
        "conditions": conditions,
        "hostIP": obs.host_ip,
        "hostIPs": [{"ip": obs.host_ip}] if obs.host_ip else [],
        "startTime": previous.get("startTime") or now_text,
        "qosClass": qos_class(pod),
        "containerStatuses": statuses,
    }
    if init_statuses:
        status["initContainerStatuses"] = init_statuses
    if obs.sandbox is not None and obs.sandbox.ip:
        ips = [obs.sandbox.ip, *obs.sandbox.additional_ips]
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
    elif previous.get("podIP") and completed:
        status["podIP"], status["podIPs"] = previous["podIP"], previous.get("podIPs", [])
    return status
