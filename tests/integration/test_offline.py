"""Offline autonomy: a node cut off from its control plane keeps, and restarts, its pods.

The control plane is the real one (``integration/kube``), and stays up: the node's link to it is a
relay the test cuts, as a dropped uplink would; the node is a real ``vnode run`` on the session's
containerd; SIGKILL stands for a power cut.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from integration.kube.view import ClusterView
from integration.node import running_node, wait_for
from tests.integration.test_cluster import CONFIGURED, api_running, get_json
from tests.integration.test_local_api import kubectl


async def test_pod_with_config_maps_and_secrets_restarts_offline_from_the_cache(
    containerd: Any, cluster: ClusterView, tmp_path: Path
) -> None:
    """Online, a pod takes env and files from a configMap and a secret. Then the control plane
    goes away, vnode is SIGKILLed and the pod's sandbox is removed (as a host reboot would): vnode,
    started again with no master answering, recreates the pod with the same env and files from
    its store, where the secret was kept sealed."""
    link = cluster.relay()
    ns = cluster.namespace
    async with running_node(
        tmp_path, containerd.endpoint, node_name="edge1", extra_args=cluster.node_args(servers=[link.url])
    ) as node:
        await cluster.kubectl("apply", "-f", "-", stdin=CONFIGURED.encode())
        await wait_for(lambda: api_running(cluster, "configured"), what="the configured pod to run")
        await node.log_containing("configured", "main", b"env secret edge unset", namespace=cluster.namespace)
        before = (await node.pod("configured") or {})["status"]["containerStatuses"][0]["containerID"]

        link.cut()
        await node.kill()
        assert containerd.remove_sandboxes() == 1
        for old_log in node.logs_dir.iterdir():
            shutil.rmtree(old_log)
        disk = (node.root_dir / "store" / "data.mdb").read_bytes()
        assert b"c2VjcmV0" not in disk  # the secret's value, base64 as the API holds it

        await node.start()

        async def recreated() -> str | None:
            pod = await node.pod("configured")
            statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
            running = statuses and "running" in statuses[0]["state"]
            return statuses[0]["containerID"] if running and statuses[0]["containerID"] != before else None

        await wait_for(recreated, timeout=60, what="the pod recreated offline")
        await node.log_containing("configured", "main", b"env secret edge unset", namespace=cluster.namespace)
        await node.log_containing("configured", "main", b"file hello-1", namespace=cluster.namespace)

        # The operator on site: the real kubectl against the node's local API, still offline.
        _, out, _ = await kubectl(node, "-n", ns, "get", "pods")
        assert "configured" in out and "Running" in out
        _, out, _ = await kubectl(node, "-n", ns, "get", "configmap", "settings", "-o", "json")
        assert json.loads(out)["data"]["greeting"] == "hello-1"
        _, out, _ = await kubectl(node, "-n", ns, "get", "secret", "creds", "-o", "json")
        assert json.loads(out)["data"]["password"] == "c2VjcmV0"
        _, out, _ = await kubectl(node, "get", "node", "edge1", "-o", "json")
        assert json.loads(out)["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd")
        _, out, _ = await kubectl(node, "-n", ns, "logs", "configured")
        assert "env secret edge unset" in out

        # containerd loses the containers under the running node (as a containerd restart
        # does): the pod is made again, still from the store.
        adopted = await recreated()
        assert containerd.remove_sandboxes() == 1

        async def made_again() -> bool:
            return (await recreated()) not in (None, adopted)

        await wait_for(made_again, timeout=60, what="the pod made again after its containers went")


OUTAGE = """
apiVersion: v1
kind: ConfigMap
metadata: {name: b}
data: {v: b-1}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
data: {v: c-1}
---
apiVersion: v1
kind: Secret
metadata: {name: d}
data: {v: ZC0x}
"""


def outage_pod(name: str, script: str, trigger: Path, restart: str = "Always", **extra: str) -> str:
    """A pod on node edge1 whose busybox runs ``script`` with the test's trigger dir at /trigger."""
    volumes = "".join(f"\n    - {{name: {v}, {kind}: {{{ref}}}}}" for v, (kind, ref) in extra.items())
    mounts = "".join(f"\n        - {{name: {v}, mountPath: /{v}}}" for v in extra)
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: edge1
  hostNetwork: true
  restartPolicy: {restart}
  terminationGracePeriodSeconds: 2
  volumes:
    - {{name: trigger, hostPath: {{path: "{trigger}"}}}}{volumes}
  containers:
    - name: main
      image: docker.io/library/busybox:1.35
      volumeMounts:
        - {{name: trigger, mountPath: /trigger}}{mounts}
      command: [sh, -c, '{script}']
"""


async def vnode_status(root_dir: Path) -> str:
    """``vnode status`` beside the running node, as an operator on site would run it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vnode", "status", f"--root-dir={root_dir}", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out
    return out.decode()


def container(pod: dict[str, Any] | None) -> dict[str, Any]:
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or [{}]
    return dict(statuses[0])


async def test_outage_keeps_pods_and_catches_up_on_reconnect(
    containerd: Any, cluster: ClusterView, tmp_path: Path
) -> None:
    """The node's link to its only master is cut; through the API (which stays up) a pod is
    deleted, configMap b edited, c deleted and created again, secret d deleted. Meanwhile a
    container crashes and a restartPolicy Never pod completes. The node restarts the crashed
    container and nothing else. When the link returns (same address),
    the API shows the crash's restartCount, the completed pod as Succeeded, the deleted pod has
    no container left, and the mounted files match the API."""
    trigger = tmp_path / "trigger"
    trigger.mkdir()
    link = cluster.relay()
    known = other = cluster
    manifests = [OUTAGE]
    steady = [f"steady-{i}" for i in range(6)]
    for name in steady:
        manifests.append(outage_pod(name, "sleep 3600", trigger))
    manifests.append(outage_pod("doomed", "sleep 3600", trigger))
    wait_then = "while [ ! -f /trigger/{0} ]; do sleep 0.2; done; rm /trigger/{0}; exit {1}"
    manifests.append(outage_pod("crasher", wait_then.format("crash", 1), trigger))
    manifests.append(outage_pod("oneshot", wait_then.format("finish", 0), trigger, restart="Never"))
    reader = 'while true; do echo "seen $(cat /b/v) $(cat /c/v)"; sleep 1; done'
    manifests.append(
        outage_pod(
            "reader",
            reader,
            trigger,
            b=("configMap", "name: b"),
            c=("configMap", "name: c"),
            d=("secret", "secretName: d, optional: true"),
        )
    )
    names = [*steady, "doomed", "crasher", "oneshot", "reader"]  # ten pods
    async with running_node(
        tmp_path, containerd.endpoint, node_name="edge1", extra_args=cluster.node_args(servers=[link.url])
    ) as node:
        await known.kubectl("apply", "-f", "-", stdin="---".join(manifests).encode())
        for name in names:
            await wait_for(lambda name=name: api_running(known, name), what=f"{name} Running")
        await node.log_containing("reader", "main", b"seen b-1 c-1", namespace=cluster.namespace)
        before = {name: container(await node.pod(name)) for name in names}

        link.cut()  # the node's only master: the node is offline from here
        await other.kubectl("delete", "pod", "doomed", "--grace-period=0", "--force")
        await other.kubectl("patch", "configmap", "b", "--type=merge", "-p", '{"data":{"v":"b-2"}}')
        await other.kubectl("delete", "configmap", "c")
        recreated = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {v: c-2}\n"
        await other.kubectl("apply", "-f", "-", stdin=recreated.encode())
        await other.kubectl("delete", "secret", "d")
        (trigger / "crash").touch()
        (trigger / "finish").touch()

        async def crashed_and_restarted() -> bool:
            crasher, oneshot = container(await node.pod("crasher")), container(await node.pod("oneshot"))
            return (
                crasher.get("restartCount") == 1
                and "running" in crasher["state"]
                and ("terminated" in oneshot.get("state", {}))
            )

        await wait_for(crashed_and_restarted, timeout=60, what="the crash restarted, oneshot done, offline")
        assert "doomed" in await node.pods()  # nothing is stopped because the API is silent

        async def queued() -> bool:
            report = await vnode_status(node.root_dir)
            return "running offline since" in report and "events waiting to be posted" in report

        await wait_for(queued, what="vnode status to show the outage and its queued events")

        link.restore()

        async def caught_up() -> bool:
            crasher = container(await get_json(known, "pod", "crasher"))
            oneshot = await get_json(known, "pod", "oneshot")
            gone = "doomed" not in await asyncio.to_thread(containerd.running_containers)
            return (
                crasher.get("restartCount") == 1
                and "running" in crasher.get("state", {})
                and (oneshot or {}).get("status", {}).get("phase") == "Succeeded"
                and gone
                and "doomed" not in await node.pods()
            )

        await wait_for(caught_up, timeout=60, what="the API and the node to agree after reconnect")
        await node.log_containing("reader", "main", b"seen b-2 c-2", namespace=cluster.namespace)
        for name in (*steady, "reader"):
            now = container(await get_json(known, "pod", name))
            assert now["containerID"] == before[name]["containerID"], name
            assert now["restartCount"] == 0, name


async def test_status_reached_offline_survives_a_restart_offline(
    containerd: Any, cluster: ClusterView, tmp_path: Path
) -> None:
    """A pod completes while the master is down, vnode is SIGKILLed and started again, still
    offline: when the master returns, the API shows the pod Succeeded, and a pod whose status
    did not change is not written again."""
    trigger = tmp_path / "trigger"
    trigger.mkdir()
    plane = cluster
    link = cluster.relay()
    wait_then = "while [ ! -f /trigger/finish ]; do sleep 0.2; done; exit 0"
    pods = [
        outage_pod("oneshot", wait_then, trigger, restart="Never"),
        outage_pod("steady", "sleep 3600", trigger),
    ]
    async with running_node(
        tmp_path, containerd.endpoint, node_name="edge1", extra_args=cluster.node_args(servers=[link.url])
    ) as node:
        await plane.kubectl("apply", "-f", "-", stdin="---".join(pods).encode())
        for name in ("oneshot", "steady"):
            await wait_for(lambda name=name: api_running(plane, name), what=f"{name} Running")
        steady_rv = (await get_json(plane, "pod", "steady"))["metadata"]["resourceVersion"]

        link.cut()
        (trigger / "finish").touch()

        async def done() -> bool:
            return "terminated" in container(await node.pod("oneshot")).get("state", {})

        await wait_for(done, what="oneshot to complete offline")
        await node.kill()
        await node.start()
        await wait_for(lambda: node.pod("steady"), what="the pods restored offline")

        async def offline_report() -> str | None:  # the relay hangs: noticed at the request timeout
            report = await vnode_status(node.root_dir)
            return report if "running offline since" in report else None

        report = await wait_for(offline_report, what="vnode status to say the node runs offline")
        assert f"{cluster.namespace}/oneshot\tSucceeded" in report

        link.restore()

        async def succeeded() -> bool:
            pod = await get_json(plane, "pod", "oneshot")
            return (pod or {}).get("status", {}).get("phase") == "Succeeded"

        await wait_for(succeeded, timeout=60, what="Succeeded in the API after reconnect")
        await wait_for(lambda: get_json(plane, "lease", "-n", "kube-node-lease", "edge1"), what="lease")
        assert (await get_json(plane, "pod", "steady"))["metadata"]["resourceVersion"] == steady_rv

        async def outage_reported() -> dict[str, Any] | None:
            node_obj = await get_json(plane, "node", "edge1")
            conditions = {c["type"]: c for c in node_obj["status"]["conditions"]}
            offline = conditions.get("EdgeOffline", {})
            return offline if offline.get("reason") == "Reconnected" else None

        offline = await wait_for(outage_reported, timeout=30, what="the EdgeOffline condition")
        assert offline["status"] == "False" and "ran offline from" in offline["message"]
        events = await get_json(plane, "events", "-A", "--field-selector", "involvedObject.name=edge1")
        # One Event for this outage (a loaded machine may have had a short one before the cut).
        reconnected = [e for e in events["items"] if e["reason"] == "Reconnected"]
        assert [e["message"] for e in reconnected].count(offline["message"]) == 1
        assert all(e["count"] == 1 for e in reconnected)
        assert f"reachable at the last heartbeat, through {link.url}" in await vnode_status(node.root_dir)
