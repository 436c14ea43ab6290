"""Probes on real containerd: liveness restarts, readiness flips, startup holds the others off,
TCP and gRPC health checks, and ``/metrics/probes``.

Each pod is a hostNetwork busybox (so its IP is the node's, 127.0.0.1 here) whose state the test
changes through CRI ExecSync, the way an operator's ``kubectl exec`` would.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from integration.node import VnodeProcess, busybox_pod, container_status, wait_for
from vnode.runtime.cri import CriClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ready(pod: dict[str, Any]) -> bool:
    return {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}.get("Ready") == "True"


def condition(pod: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in pod["status"]["conditions"] if c["type"] == kind)


async def in_container(cri: CriClient, pod: dict[str, Any], *command: str) -> None:
    container_id = container_status(pod, "main")["containerID"].split("://", 1)[1]
    _, _, code = await cri.exec_sync(container_id, list(command), 10)
    assert code == 0, command


def logged(node: VnodeProcess, text: str) -> Callable[[], Any]:
    async def check() -> bool | None:
        return True if text in node.log_file.read_text(errors="replace") else None

    return check


async def test_a_failing_liveness_probe_restarts_the_container(node: VnodeProcess, cri: CriClient) -> None:
    probe = {"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 2}
    pod = busybox_pod(
        "alive",
        "touch /tmp/healthy; sleep 3600",
        container={"livenessProbe": probe},
        terminationGracePeriodSeconds=1,
    )
    node.write_manifest("alive.yaml", pod)
    first = await node.wait_pod("alive", lambda p: container_status(p, "main")["ready"], what="running, live")
    await in_container(cri, first, "rm", "/tmp/healthy")

    def restarted(p: dict[str, Any]) -> bool:
        s = container_status(p, "main")
        return s["restartCount"] == 1 and "running" in s["state"]

    second = await node.wait_pod("alive", restarted, timeout=60, what="restarted once")
    assert container_status(second, "main")["lastState"]["terminated"]["exitCode"] in (137, 143)
    name = node.static_name("alive")
    await wait_for(
        logged(node, f"pod/default/{name} Killing: Container main failed liveness probe, will be restarted")
    )
    unhealthy = f"pod/default/{name} Unhealthy: Liveness probe failed: cat: can't open '/tmp/healthy'"
    assert unhealthy in node.log_file.read_text(errors="replace")


async def test_an_http_readiness_probe_flips_the_ready_condition(node: VnodeProcess, cri: CriClient) -> None:
    port = free_port()
    probe = {"httpGet": {"path": "/index.html", "port": port}, "periodSeconds": 1, "failureThreshold": 1}
    command = f"mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 127.0.0.1:{port} -h /www"
    node.write_manifest("web.yaml", busybox_pod("web", command, container={"readinessProbe": probe}))
    up = await node.wait_pod("web", ready, what="Ready")
    assert container_status(up, "main")["ready"] is True

    await in_container(cri, up, "rm", "/www/index.html")
    down = await node.wait_pod("web", lambda p: not ready(p), what="not Ready once the page is gone")
    assert condition(down, "Ready")["reason"] == "ContainersNotReady"
    assert condition(down, "ContainersReady")["message"] == "containers with unready status: [main]"
    assert container_status(down, "main")["restartCount"] == 0  # readiness never restarts
    name = node.static_name("web")
    await wait_for(
        logged(node, f"{name} Unhealthy: Readiness probe failed: HTTP probe failed with statuscode: 404")
    )

    await in_container(cri, up, "sh", "-c", "echo ok > /www/index.html")
    await node.wait_pod("web", ready, what="Ready again once the page is back")


async def test_a_tcp_probe_on_a_closed_port_keeps_the_pod_unready(node: VnodeProcess) -> None:
    port = free_port()
    probe = {"tcpSocket": {"port": port}, "periodSeconds": 1}
    node.write_manifest(
        "closed.yaml", busybox_pod("closed", "sleep 3600", container={"readinessProbe": probe})
    )
    name = node.static_name("closed")
    await wait_for(
        logged(
            node,
            f"{name} Unhealthy: Readiness probe failed: "
            f"dial tcp 127.0.0.1:{port}: connect: connection refused",
        )
    )
    pod = await node.wait_pod("closed", lambda p: "running" in container_status(p, "main")["state"])
    assert not ready(pod) and container_status(pod, "main")["ready"] is False


async def test_a_startup_probe_holds_liveness_and_readiness_off(node: VnodeProcess, cri: CriClient) -> None:
    container = {
        "startupProbe": {
            "exec": {"command": ["cat", "/tmp/started"]},
            "periodSeconds": 1,
            "failureThreshold": 30,
        },
        # would restart the container at its first run: it must not run before the start
        "livenessProbe": {
            "exec": {"command": ["cat", "/tmp/started"]},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
        "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
    }
    node.write_manifest("slow.yaml", busybox_pod("slow", "sleep 3600", container=container))
    name = node.static_name("slow")
    for _ in range(3):  # three startup failures: liveness, which would have killed it, never ran
        await wait_for(logged(node, f"{name} Unhealthy: Startup probe failed"))
    pod = await node.wait_pod("slow", lambda p: "running" in container_status(p, "main")["state"])
    status = container_status(pod, "main")
    assert (status["started"], status["ready"], status["restartCount"]) == (False, False, 0)
    assert "Liveness probe failed" not in node.log_file.read_text(errors="replace")

    await in_container(cri, pod, "touch", "/tmp/started")
    started = await node.wait_pod("slow", ready, what="started and Ready")
    assert container_status(started, "main")["started"] is True
    assert container_status(started, "main")["restartCount"] == 0


class Health:
    """A grpc.health.v1 server on the host (the pod is hostNetwork): its status is switched by
    the test. The two messages are encoded by hand, as vnode's probe does."""

    def __init__(self) -> None:
        self.status = 1  # SERVING
        self.server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(self.check)}
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def check(self, request: bytes, context: Any) -> bytes:
        return b"\x08" + bytes([self.status])


async def test_a_grpc_probe_reads_the_health_service(node: VnodeProcess) -> None:
    health = Health()
    await health.server.start()
    try:
        probe = {"grpc": {"port": health.port}, "periodSeconds": 1, "failureThreshold": 1}
        node.write_manifest(
            "grpc.yaml", busybox_pod("grpc", "sleep 3600", container={"readinessProbe": probe})
        )
        await node.wait_pod("grpc", ready, what="Ready on SERVING")
        health.status = 2  # NOT_SERVING
        await node.wait_pod("grpc", lambda p: not ready(p), what="unready on NOT_SERVING")
        name = node.static_name("grpc")
        await wait_for(
            logged(
                node,
                f'{name} Unhealthy: Readiness probe failed: service unhealthy (responded with "NOT_SERVING")',
            )
        )
        code, body = await node.get("/metrics/probes")
        assert code == 200
        assert (
            f'pod="{name}",pod_uid=' in body.decode()
            and 'probe_type="Readiness",result="failed"' in body.decode()
        )
    finally:
        await health.server.stop(None)


async def test_a_restart_of_vnode_keeps_ready_and_started_and_the_container(
    node: VnodeProcess, cri: CriClient
) -> None:
    """As kubelet since 1.35 (KEP-4781): a container running across a restart of vnode keeps its
    ``ready`` and ``started`` until probed again, and is not restarted (one started less than 10 s
    before vnode is taken for new, as kubelet does). The readiness probe takes
    3 s to answer, so for the first seconds after the restart only the kept state can say Ready."""
    container = {
        "startupProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1},
        "readinessProbe": {
            "exec": {"command": ["sh", "-c", "sleep 3; cat /tmp/ready"]},
            "periodSeconds": 1,
            "timeoutSeconds": 10,
        },
    }
    node.write_manifest("kept.yaml", busybox_pod("kept", "touch /tmp/ready; sleep 3600", container=container))
    before = await node.wait_pod("kept", ready, what="started and Ready")
    kept = container_status(before, "main")["containerID"]
    started_at = datetime.fromisoformat(container_status(before, "main")["state"]["running"]["startedAt"])

    async def older_than_the_grace() -> bool:  # kubelet's: started 10 s before its own start
        return datetime.now(tz=UTC) - started_at > timedelta(seconds=11)

    await wait_for(older_than_the_grace, timeout=30, what="the container 11 s old")

    await node.terminate()
    await node.start()
    for _ in range(10):  # the first 2 s of the new vnode, while its readiness probe is still running
        pod = await node.pod(node.static_name("kept"))
        assert pod is not None
        status = container_status(pod, "main")
        assert (status["containerID"], status["restartCount"]) == (kept, 0)
        assert (status["started"], status["ready"], ready(pod)) == (True, True, True), pod["status"]
        await asyncio.sleep(0.2)  # sampling a window, not waiting for an event

    await in_container(cri, before, "rm", "/tmp/ready")  # the probes go on after the restart
    await node.wait_pod("kept", lambda p: not ready(p), what="unready once the file is gone")


async def test_an_exec_probe_past_its_timeout_fails(node: VnodeProcess) -> None:
    """containerd ends the exec at timeoutSeconds; kubelet's message names the command."""
    probe = {"exec": {"command": ["sleep", "5"]}, "timeoutSeconds": 1, "periodSeconds": 2}
    node.write_manifest("stuck.yaml", busybox_pod("stuck", "sleep 3600", container={"readinessProbe": probe}))
    name = node.static_name("stuck")
    await wait_for(logged(node, f'{name} Unhealthy: Readiness probe failed: command "sleep 5" timed out'))
    pod = await node.wait_pod("stuck", lambda p: "running" in container_status(p, "main")["state"])
    assert not ready(pod)
