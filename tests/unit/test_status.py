"""Pod status computation against kubelet's rules: phase, conditions, container states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from vnode.provider.types import (
    ContainerObservation,
    ContainerState,
    PodObservation,
    SandboxObservation,
    Waiting,
)
from vnode.runtime.status import compute_pod_status

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
SANDBOX = SandboxObservation(id="sb1", ready=True, ip="10.88.0.5")


def pod(
    restart_policy: str = "Always", init: list[str] | None = None, containers: tuple[str, ...] = ("a",)
) -> Any:
    return {
        "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
        "spec": {
            "restartPolicy": restart_policy,
            "initContainers": [{"name": n, "image": "busybox:1.35"} for n in init or []],
            "containers": [{"name": n, "image": "busybox:1.35"} for n in containers],
        },
    }


def running(name: str, attempt: int = 0, cid: str = "c1") -> ContainerObservation:
    return ContainerObservation(
        id=cid,
        name=name,
        attempt=attempt,
        state=ContainerState.RUNNING,
        started_at=T0,
        image_ref="sha256:abc",
    )


def exited(name: str, code: int, attempt: int = 0, cid: str = "c0", reason: str = "") -> ContainerObservation:
    return ContainerObservation(
        id=cid,
        name=name,
        attempt=attempt,
        state=ContainerState.EXITED,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=1),
        exit_code=code,
        reason=reason,
    )


def conditions(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_no_sandbox_yet_is_pending_and_container_creating() -> None:
    status = compute_pod_status(pod(), PodObservation(sandbox=None, host_ip="192.0.2.2"), None, T0)
    assert status["phase"] == "Pending"
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert conditions(status) == {
        "PodReadyToStartContainers": "False",
        "Initialized": "True",
        "Ready": "False",
        "ContainersReady": "False",
        "PodScheduled": "True",
    }
    assert status["hostIP"] == "192.0.2.2"
    assert "podIP" not in status


def test_running_pod_is_ready_with_ids_and_ips() -> None:
    obs = PodObservation(sandbox=SANDBOX, containers={"a": [running("a")]}, host_ip="192.0.2.2")
    status = compute_pod_status(pod(), obs, None, T0)
    cs = status["containerStatuses"][0]
    assert status["phase"] == "Running"
    assert cs["state"] == {"running": {"startedAt": "2026-11-23T10:00:00Z"}}
    assert cs["ready"] and cs["started"] and cs["restartCount"] == 0
    assert cs["containerID"] == "containerd://c1"
    assert cs["imageID"] == "sha256:abc"
    assert status["podIP"] == "10.88.0.5" and status["podIPs"] == [{"ip": "10.88.0.5"}]
    assert all(v == "True" for v in conditions(status).values())
    assert status["qosClass"] == "BestEffort"


def test_crash_loop_shows_waiting_last_state_and_restart_count() -> None:
    obs = PodObservation(
        sandbox=SANDBOX,
        containers={"a": [exited("a", 1, attempt=2, cid="c2"), exited("a", 1, attempt=1, cid="c1")]},
        waiting={"a": Waiting("CrashLoopBackOff", "back-off 40s restarting failed container=a")},
    )
    status = compute_pod_status(pod(), obs, None, T0)
    cs = status["containerStatuses"][0]
    assert cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert cs["lastState"]["terminated"]["exitCode"] == 1
    assert cs["lastState"]["terminated"]["reason"] == "Error"
    assert cs["lastState"]["terminated"]["containerID"] == "containerd://c2"
    assert cs["restartCount"] == 2
    assert status["phase"] == "Running"  # kubelet: stopped with restartPolicy Always is Running
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ContainersNotReady"
    assert ready["message"] == "containers with unready status: [a]"


def test_phases_of_finished_pods() -> None:
    ok = PodObservation(sandbox=SANDBOX, containers={"a": [exited("a", 0)]})
    bad = PodObservation(sandbox=SANDBOX, containers={"a": [exited("a", 2)]})
    assert compute_pod_status(pod("Never"), ok, None, T0)["phase"] == "Succeeded"
    assert compute_pod_status(pod("OnFailure"), ok, None, T0)["phase"] == "Succeeded"
    assert compute_pod_status(pod("Never"), bad, None, T0)["phase"] == "Failed"
    assert compute_pod_status(pod("OnFailure"), bad, None, T0)["phase"] == "Running"
    done = compute_pod_status(pod("Never"), ok, None, T0)
    ready = next(c for c in done["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "PodCompleted"
    assert done["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"


def test_init_containers_gate_and_report() -> None:
    p = pod(init=["i1", "i2"])
    obs = PodObservation(sandbox=SANDBOX, containers={"i1": [exited("i1", 0)], "i2": [running("i2")]})
    status = compute_pod_status(p, obs, None, T0)
    assert status["phase"] == "Pending"
    init = status["initContainerStatuses"]
    assert init[0]["ready"] is True and init[0]["state"]["terminated"]["reason"] == "Completed"
    assert init[1]["ready"] is False
    assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing"
    initialized = next(c for c in status["conditions"] if c["type"] == "Initialized")
    assert (
        initialized["status"] == "False"
        and initialized["message"] == "containers with incomplete status: [i2]"
    )


def test_failed_init_container_fails_a_never_pod() -> None:
    obs = PodObservation(sandbox=SANDBOX, containers={"i1": [exited("i1", 1)]})
    assert compute_pod_status(pod("Never", init=["i1"]), obs, None, T0)["phase"] == "Failed"
    assert compute_pod_status(pod("Always", init=["i1"]), obs, None, T0)["phase"] == "Pending"


def test_unchanged_conditions_keep_their_transition_time_and_start_time() -> None:
    obs = PodObservation(sandbox=SANDBOX, containers={"a": [running("a")]})
    first = compute_pod_status(pod(), obs, None, T0)
    again = compute_pod_status(pod(), obs, first, T0 + timedelta(minutes=5))
    assert again == first
    stopped = PodObservation(sandbox=SANDBOX, containers={"a": [exited("a", 1)]})
    later = compute_pod_status(pod(), stopped, first, T0 + timedelta(minutes=5))
    ready = next(c for c in later["conditions"] if c["type"] == "Ready")
    scheduled = next(c for c in later["conditions"] if c["type"] == "PodScheduled")
    assert ready["lastTransitionTime"] == "2026-11-23T10:05:00Z"
    assert scheduled["lastTransitionTime"] == "2026-11-23T10:00:00Z"
    assert later["startTime"] == "2026-11-23T10:00:00Z"


def test_waiting_reasons_pass_through_for_image_and_config_errors() -> None:
    for reason in ("ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "CreateContainerError"):
        obs = PodObservation(sandbox=SANDBOX, waiting={"a": Waiting(reason, "why")})
        cs = compute_pod_status(pod(), obs, None, T0)["containerStatuses"][0]
        assert cs["state"] == {"waiting": {"reason": reason, "message": "why"}}
        assert cs["lastState"] == {}


def test_guaranteed_qos() -> None:
    p = pod()
    p["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "100m", "memory": "32Mi"}}
    status = compute_pod_status(p, PodObservation(sandbox=None), None, T0)
    assert status["qosClass"] == "Guaranteed"
    p["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "10m"}, "limits": {"cpu": "100m"}}
    assert compute_pod_status(p, PodObservation(sandbox=None), None, T0)["qosClass"] == "Burstable"
