"""Probes of an API pod with the node's link to the real control plane cut: liveness restarts and
readiness go on offline, and when the link returns the API gets the latest status and the Events,
repeated ones counted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from integration.kube.view import ClusterView
from integration.node import container_status, running_node, wait_for
from tests.integration.test_kube import BUSYBOX, apply, conditions, node_ready
from tests.integration.test_probes import in_container
from vnode.runtime.cri import CriClient


async def test_probes_go_on_offline_and_the_api_catches_up(
    containerd: Any, cluster: ClusterView, cri: CriClient, tmp_path: Path
) -> None:
    relay = cluster.relay(0)
    args = cluster.node_args("probe1", servers=[relay.url])
    liveness = {"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 2}
    readiness = {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1, "failureThreshold": 1}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "alive"},
        "spec": {
            "nodeName": "probe1",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": BUSYBOX,
                    "command": ["sh", "-c", "touch /tmp/healthy; sleep 3600"],
                    "livenessProbe": liveness,
                    "readinessProbe": readiness,
                }
            ],
        },
    }

    async def api(*args: str) -> dict[str, Any]:
        found: dict[str, Any] = dict(await cluster.get_json(*args))
        return found

    async with running_node(tmp_path, containerd.endpoint, node_name="probe1", extra_args=args) as node:
        await wait_for(lambda: node_ready(cluster, "probe1"), timeout=60, what="probe1 Ready")
        await apply(cluster, pod)

        async def running_unready() -> dict[str, Any] | None:
            obj = await api("pod", "alive")
            statuses = obj.get("status", {}).get("containerStatuses") or []
            ok = (
                bool(statuses)
                and "running" in statuses[0]["state"]
                and conditions(obj).get("Ready") == "False"
            )
            return obj if ok else None

        first = await wait_for(running_unready, timeout=60, what="the pod Running and unready in the API")
        relay.cut()
        await in_container(cri, first, "rm", "/tmp/healthy")

        async def restarted() -> dict[str, Any] | None:
            local = await node.pod("alive")
            if local is None:
                return None
            status = container_status(local, "main")
            return local if status["restartCount"] == 1 and "running" in status["state"] else None

        second = await wait_for(restarted, timeout=60, what="the container restarted offline")
        await in_container(cri, second, "touch", "/tmp/ready")

        async def ready_locally() -> bool:
            local = await node.pod("alive")
            return local is not None and container_status(local, "main")["ready"] is True

        await wait_for(ready_locally, timeout=30, what="the new container ready offline")
        stale = await api("pod", "alive")
        assert container_status(stale, "main")["restartCount"] == 0  # the API did not hear meanwhile
        relay.restore()

        async def caught_up() -> dict[str, Any] | None:
            obj = await api("pod", "alive")
            status = container_status(obj, "main")
            ok = (
                status["restartCount"] == 1
                and status["ready"] is True
                and conditions(obj).get("Ready") == "True"
            )
            return obj if ok else None

        final = await wait_for(caught_up, timeout=90, what="the API to get the offline status")
        assert (
            container_status(final, "main")["containerID"] == container_status(second, "main")["containerID"]
        )

        async def events() -> dict[tuple[str, str], int] | None:
            body = await api("events", "--field-selector", "involvedObject.name=alive")
            found: dict[tuple[str, str], int] = {}
            for event in body.get("items") or []:
                key = (str(event.get("reason")), str(event.get("message")))
                found[key] = found.get(key, 0) + int(event.get("count") or 1)
            return (
                found
                if ("Killing", "Container main failed liveness probe, will be restarted") in found
                else None
            )

        found = await wait_for(events, timeout=60, what="the offline Events in the API")
        # The output as the command wrote it, newline included (kubelet does not trim it either).
        unhealthy = "Liveness probe failed: cat: can't open '/tmp/healthy': No such file or directory\n"
        # The two failures up to the threshold: one Event, counted twice.
        assert found.get(("Unhealthy", unhealthy)) == 2, found
        readiness_failures = sum(
            n for (r, m), n in found.items() if r == "Unhealthy" and m.startswith("Readiness probe failed")
        )
        assert readiness_failures >= 2, found  # failing before the cut and offline until /tmp/ready was made
        # Counted, not multiplied: one Event object per distinct message.
        objects = await api("events", "--field-selector", "involvedObject.name=alive,reason=Unhealthy")
        assert len(objects["items"]) == len({m for (r, m) in found if r == "Unhealthy"}), objects
