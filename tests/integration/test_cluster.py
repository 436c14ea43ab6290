"""vnode as a node of a control plane: registration, Lease, pods from the API, deletion.

The control plane is the test one (``integration/controlplane.py``); the node runs on the
session's real containerd; the client is the real kubectl.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from integration.controlplane import ControlPlaneProcess
from integration.faults import FaultyMaster
from integration.kube import KubeCluster
from integration.kube.view import ClusterView
from integration.node import VnodeProcess, busybox_pod, running_node, wait_for

POD = """
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  nodeName: edge1
  hostNetwork: true
  terminationGracePeriodSeconds: 3
  containers:
    - name: main
      image: docker.io/library/busybox:1.35
      command: [sh, -c, "trap 'exit 0' TERM; echo started; sleep 3600 & wait"]
"""


@pytest.fixture
async def node(containerd: Any, cluster: ClusterView, tmp_path: Path) -> AsyncIterator[VnodeProcess]:
    async with running_node(
        tmp_path, containerd.endpoint, node_name="edge1", extra_args=cluster.node_args()
    ) as proc:
        yield proc


async def api_running(cluster: ControlPlaneProcess | ClusterView, name: str) -> dict[str, Any] | None:
    """The pod ``name`` from the API once its first container is reported running."""
    pod = await get_json(cluster, "pod", name)
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    return pod if statuses and "running" in statuses[0]["state"] else None


async def get_json(cluster: ControlPlaneProcess | ClusterView, *args: str) -> Any:
    out = await cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(out) if out.strip() else None


T = TypeVar("T")
IDLE_SECONDS = 135  # the container's silence; the follow streams must outlast 120 s of it


class LoopThread:
    """An event loop on a thread of its own, for processes and streams that outlive one test
    (each test has its own loop): run coroutines there and wait for them from anywhere."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Follower:
    """A ``kubectl logs -f`` and the lines it printed, with when each arrived."""

    name: str
    proc: asyncio.subprocess.Process
    lines: list[tuple[float, str]] = field(default_factory=list)

    async def collect(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append((time.monotonic(), line.decode().rstrip("\n")))

    def arrived(self, text: str) -> float | None:
        return next((t for t, line in self.lines if line == text), None)


@dataclass
class IdleFollow:
    """Two ``kubectl logs -f`` of one pod that prints, is silent for ``IDLE_SECONDS``, then
    prints again: one through the control plane (the kubelet proxy), one through the node's local
    API. Started by the first test of this module and checked by its last, so the silence passes
    while the other tests run."""

    loop: LoopThread
    followers: list[Follower]
    collecting: list[concurrent.futures.Future[None]]
    node: VnodeProcess


IDLE_POD = f"""
apiVersion: v1
kind: Pod
metadata: {{name: idle}}
spec:
  nodeName: idle1
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: docker.io/library/busybox:1.35
      command: [sh, -c, "echo before-idle; sleep {IDLE_SECONDS}; echo after-idle; sleep 3600"]
"""


@pytest.fixture(scope="module")
def idle_follow(
    containerd: Any, kube: KubeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IdleFollow]:
    base = tmp_path_factory.mktemp("idle")
    loop = LoopThread()
    containerd.spared_nodes.add("idle1")  # other tests' clean-up must leave this pod running
    plane = ClusterView(kube, "idle-follow")
    node = VnodeProcess(
        base / "node", containerd.endpoint, node_name="idle1", extra_args=plane.node_args("idle1")
    )
    followers: list[Follower] = []

    async def start() -> list[Follower]:
        await plane.open()
        await node.start()
        await plane.kubectl("apply", "-f", "-", stdin=IDLE_POD.encode())
        await wait_for(lambda: api_running(plane, "idle"), what="the idle pod to run")
        local = node.root_dir / "local.kubeconfig"
        commands = {
            "control plane": plane.kubectl_argv("logs", "-f", "idle"),
            "local API": ["kubectl", "--kubeconfig", str(local), "-n", plane.namespace, "logs", "-f", "idle"],
        }
        for name, argv in commands.items():
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            followers.append(Follower(name, proc))
        return followers

    async def stop() -> None:
        for follower in followers:
            if follower.proc.returncode is None:
                follower.proc.kill()
                await follower.proc.wait()
        if node.proc is not None and node.proc.returncode is None:
            await node.terminate()
        await plane.close()

    try:
        loop.run(start(), 120)
        collecting = [loop.submit(f.collect()) for f in followers]
        yield IdleFollow(loop, followers, collecting, node)
    finally:
        try:
            loop.run(stop(), 60)
        finally:
            loop.close()
            containerd.spared_nodes.discard("idle1")
            containerd.remove_sandboxes()


async def _arrival(follower: Follower, text: str, timeout: float) -> float:
    """When ``text`` reached the follower (whose lines another thread appends), waiting for it."""

    async def probe() -> float | None:
        return follower.arrived(text)

    return await wait_for(probe, timeout=timeout, what=f"{text!r} from kubectl logs -f via {follower.name}")


async def test_kubectl_logs_follow_starts_before_a_long_silence(idle_follow: IdleFollow) -> None:
    """The first half of the idle-follow check (the second is the last test of this module)."""
    for follower in idle_follow.followers:
        try:
            await _arrival(follower, "before-idle", 60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {follower.lines}\n{idle_follow.node.log_tail()}") from None


async def test_kubectl_logs_through_the_control_plane(cluster: ClusterView, node: VnodeProcess) -> None:
    ticker = POD.replace("name: web", "name: ticker").replace(
        "trap 'exit 0' TERM; echo started; sleep 3600 & wait",
        "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.3; done",
    )
    await cluster.kubectl("apply", "-f", "-", stdin=ticker.encode())
    await wait_for(lambda: api_running(cluster, "ticker"), what="the ticker to run")
    await node.log_containing("ticker", "main", b"tick-2\n", namespace=cluster.namespace)

    out = await cluster.kubectl("logs", "ticker")
    assert out.startswith("tick-0\ntick-1\ntick-2\n"), out
    out = await cluster.kubectl("logs", "ticker", "-c", "main", "--tail=1", "--timestamps")
    assert len(out.splitlines()) == 1 and " tick-" in out, out
    code, _, stderr = await cluster.kubectl_status("logs", "nope")
    assert code != 0 and 'pods "nope" not found' in stderr, stderr

    proc = await asyncio.create_subprocess_exec(
        *cluster.kubectl_argv("logs", "-f", "--tail=1", "ticker"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            first = int((await proc.stdout.readline()).decode().strip().removeprefix("tick-"))
            later = int((await proc.stdout.readline()).decode().strip().removeprefix("tick-"))
        assert later == first + 1  # written after the command started, streamed through the proxy
    finally:
        proc.kill()
        await proc.wait()


async def test_node_registers_ready_and_renews_its_lease(cluster: ClusterView, node: VnodeProcess) -> None:
    async def ready() -> dict[str, Any] | None:
        obj = await get_json(cluster, "node", "edge1")
        conditions = {
            c["type"]: c["status"] for c in ((obj or {}).get("status") or {}).get("conditions") or []
        }
        return obj if conditions.get("Ready") == "True" else None

    obj = await wait_for(ready, what="the node to be Ready")
    status = obj["status"]
    assert {"type": "InternalIP", "address": "127.0.0.1"} in status["addresses"]
    assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] == node.port
    assert status["capacity"]["pods"] == "110" and int(status["capacity"]["cpu"]) >= 1
    assert status["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert obj["metadata"]["labels"]["kubernetes.io/hostname"] == "edge1"
    assert "node-role.kubernetes.io/edge" not in obj["metadata"]["labels"]  # NodeRestriction forbids it
    table = await cluster.kubectl("get", "nodes")
    assert "edge1" in table and "Ready" in table

    first = await wait_for(
        lambda: get_json(cluster, "lease", "-n", "kube-node-lease", "edge1"), what="the Lease"
    )
    assert first["spec"]["holderIdentity"] == "edge1" and first["spec"]["leaseDurationSeconds"] == 40
    assert first["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]

    async def renewed() -> bool:
        lease = await get_json(cluster, "lease", "-n", "kube-node-lease", "edge1")
        return bool(lease) and lease["spec"]["renewTime"] != first["spec"]["renewTime"]

    await wait_for(renewed, timeout=30, what="the Lease to be renewed")


async def test_pod_from_the_api_runs_reports_status_and_is_deleted(
    cluster: ClusterView, node: VnodeProcess
) -> None:
    await cluster.kubectl("apply", "-f", "-", stdin=POD.encode())

    pod = await wait_for(lambda: api_running(cluster, "web"), what="the pod to be Running in the API")
    status = pod["status"]
    assert status["phase"] == "Running" and status["hostIP"] == "127.0.0.1"
    local = (await node.pods())["web"]
    assert (
        status["containerStatuses"][0]["containerID"]
        == local["status"]["containerStatuses"][0]["containerID"]
    )
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"

    try:
        await cluster.kubectl("delete", "pod", "web", "--timeout=60s")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nvnode log:\n{node.log_tail(60)}") from None
    assert await get_json(cluster, "pod", "web") is None
    assert "web" not in await node.pods()


async def test_invalid_pod_from_the_api_gets_a_failed_status(
    cluster: ClusterView, node: VnodeProcess
) -> None:
    # The API server validates what it can; a volume type this node cannot mount passes there.
    bad = POD.replace(
        "  containers:", "  volumes: [{name: share, nfs: {server: nas.invalid, path: /x}}]\n  containers:"
    )
    await cluster.kubectl("apply", "-f", "-", stdin=bad.encode())

    async def failed() -> dict[str, Any] | None:
        pod = await get_json(cluster, "pod", "web")
        return pod if ((pod or {}).get("status") or {}).get("phase") == "Failed" else None

    pod = await wait_for(failed, what="the invalid pod to be Failed")
    assert pod["status"]["reason"] == "InvalidPod"
    assert "spec.volumes[0].nfs" in pod["status"]["message"]

    async def event() -> dict[str, Any] | None:
        body = await get_json(cluster, "events", "--field-selector", "involvedObject.name=web")
        found = [e for e in (body or {}).get("items") or [] if e["reason"] == "FailedValidation"]
        return found[0] if found else None

    seen = await wait_for(event, what="a FailedValidation event")
    assert seen["type"] == "Warning" and "spec.volumes[0].nfs" in seen["message"]


def one_context_per_master(admin: Path, servers: list[str]) -> Path:
    """The documented several-masters kubeconfig: a cluster and a context per master, one user."""
    config = json.loads(admin.read_text())
    cluster, user = config["clusters"][0]["cluster"], config["users"][0]
    names = [f"master{i}" for i in range(len(servers))]
    config["clusters"] = [
        {"name": n, "cluster": {**cluster, "server": s}} for n, s in zip(names, servers, strict=True)
    ]
    config["contexts"] = [{"name": n, "context": {"cluster": n, "user": user["name"]}} for n in names]
    config["current-context"] = names[0]
    path = admin.with_name("several-masters.kubeconfig")
    path.write_text(json.dumps(config))
    return path


def lease_time(lease: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_failover_across_faulty_and_killed_masters(
    containerd: Any, tmp_path: Path, scheme: str
) -> None:
    """Masters, in order: one that never answers, one that answers 500, one that answers garbage,
    then two real ones over one store (a ``--master`` list; over HTTPS, a kubeconfig with one
    context per master, all of one user, with the CA and a client certificate). The node gets past
    the faulty ones and registers through the first real one. That one is killed, and right away
    (before the node can notice) a pod is created and another deleted through the last one: after
    the failover the node has seen both changes, the Lease kept being renewed with no gap over
    20 s, no container restarted and vnode never died."""
    store = tmp_path / "cluster.db"
    tls = scheme == "https"
    first = ControlPlaneProcess(tmp_path, store=store, tls=tls)
    second = ControlPlaneProcess(tmp_path, store=store, tls=tls)
    await first.start()
    await second.start()
    async with (
        FaultyMaster("silent") as silent,
        FaultyMaster("error") as error,
        FaultyMaster("garbage") as garbage,
    ):
        urls = [silent.url, error.url, garbage.url, first.url, second.url]
        if tls:
            args = ["--kubeconfig", str(one_context_per_master(first.kubeconfig, urls))]
        else:
            args = ["--master", ",".join(urls)]
        node = VnodeProcess(tmp_path, containerd.endpoint, node_name="edge1", extra_args=args)
        await node.start()
        try:
            await second.kubectl(
                "apply", "-f", "-", stdin=(POD + "---" + POD.replace("web", "doomed")).encode()
            )

            def running(name: str) -> Awaitable[dict[str, Any] | None]:
                return api_running(second, name)

            before = await wait_for(
                lambda: running("web"), timeout=90, what="web Running past the faulty masters"
            )
            await wait_for(lambda: running("doomed"), timeout=30, what="doomed Running")
            cid = before["status"]["containerStatuses"][0]["containerID"]
            assert error.requests > 0 and garbage.requests > 0
            log = node.log_tail(400)
            assert "500 etcdserver: no leader" in log and "active master is now" in log
            lease = await get_json(second, "lease", "-n", "kube-node-lease", "edge1")

            await first.kill()
            await second.kubectl("apply", "-f", "-", stdin=POD.replace("name: web", "name: web2").encode())
            await second.kubectl("delete", "pod", "doomed", "--wait=false")

            last = lease_time(lease)

            async def renewed() -> datetime | None:
                when = lease_time(await get_json(second, "lease", "-n", "kube-node-lease", "edge1"))
                return when if when > last else None

            after = await wait_for(renewed, timeout=40, what="the Lease renewed through the remaining master")
            assert (after - last).total_seconds() <= 20

            await wait_for(lambda: running("web2"), timeout=60, what="the pod created during the failover")

            async def doomed_gone() -> bool:
                return "doomed" not in await node.pods() and await get_json(second, "pod", "doomed") is None

            await wait_for(doomed_gone, timeout=60, what="the pod deleted during the failover to be gone")
            now = await running("web")
            assert now is not None
            assert now["status"]["containerStatuses"][0]["containerID"] == cid
            assert now["status"]["containerStatuses"][0]["restartCount"] == 0
            assert node.proc is not None and node.proc.returncode is None
        finally:
            await node.terminate()
            await first.kill()
            await second.kill()


async def node_uid(cluster: ClusterView) -> str | None:
    obj = await get_json(cluster, "node", "edge1")
    return obj["metadata"]["uid"] if obj else None


async def test_node_marked_unknown_in_the_api_is_corrected(cluster: ClusterView, node: VnodeProcess) -> None:
    """As the node lifecycle controller does after an outage: Ready set to Unknown in the API.
    vnode watches its Node and patches the real conditions back at once, not at the next
    five-minute report, and keeps the transition time of the conditions that did not change."""

    async def ready() -> dict[str, Any] | None:
        obj = await get_json(cluster, "node", "edge1")
        conditions = {c["type"]: c for c in ((obj or {}).get("status") or {}).get("conditions") or []}
        return conditions if conditions.get("Ready", {}).get("status") == "True" else None

    before = await wait_for(ready, what="the node to be Ready")
    unknown = {
        "status": {
            "conditions": [
                {**before["Ready"], "status": "Unknown", "reason": "NodeStatusUnknown"},
                *[c for kind, c in before.items() if kind != "Ready"],
            ]
        }
    }
    await cluster.kubectl(
        "patch", "node", "edge1", "--subresource=status", "--type=merge", "-p", json.dumps(unknown)
    )
    assert (await get_json(cluster, "node", "edge1"))["status"]["conditions"]  # the patch landed
    after = await wait_for(ready, timeout=20, what="Ready=True patched back after Unknown")
    assert after["MemoryPressure"]["lastTransitionTime"] == before["MemoryPressure"]["lastTransitionTime"]
    assert "NodeStatusUnknown" not in after["Ready"]["reason"]


async def test_deleted_node_is_registered_again(cluster: ClusterView, node: VnodeProcess) -> None:
    old = await wait_for(lambda: node_uid(cluster), what="the node to register")
    await cluster.kubectl("delete", "node", "edge1")

    async def new_uid() -> str | None:
        uid = await node_uid(cluster)
        return uid if uid not in (None, old) else None

    uid = await wait_for(new_uid, timeout=30, what="the node to register again")
    assert "deleted from the API; registering it again" in node.log_tail(200)

    async def owned() -> bool:
        lease = await get_json(cluster, "lease", "-n", "kube-node-lease", "edge1")
        return bool(lease) and lease["metadata"]["ownerReferences"][0]["uid"] == uid

    await wait_for(owned, timeout=30, what="the Lease to be owned by the new Node")
    assert "Ready" in await cluster.kubectl("get", "node", "edge1")


async def test_deleted_node_ends_vnode_when_configured_to_exit(
    containerd: Any, cluster: ClusterView, tmp_path: Path
) -> None:
    async with running_node(
        tmp_path,
        containerd.endpoint,
        node_name="edge1",
        extra_args=[*cluster.node_args(), "--on-node-deleted=exit"],
    ) as proc:
        await wait_for(lambda: node_uid(cluster), what="the node to register")
        await cluster.kubectl("delete", "node", "edge1")
        assert proc.proc is not None
        assert await asyncio.wait_for(proc.proc.wait(), 60) == 3
        assert "cluster.onNodeDeleted is 'exit'" in proc.log_tail(50)
        assert await node_uid(cluster) is None


async def test_kubeconfig_with_one_master_and_a_stranger_refused(
    containerd: Any, cluster: ClusterView, tmp_path: Path
) -> None:
    """A kubeconfig naming one master (the last), over HTTPS with the node's client certificate."""
    args = cluster.node_args("edge1", servers=cluster.urls[-1:])
    node = VnodeProcess(tmp_path, containerd.endpoint, node_name="edge1", extra_args=args)
    await node.start()
    try:
        await cluster.kubectl("apply", "-f", "-", stdin=POD.encode())

        await wait_for(lambda: api_running(cluster, "web"), what="the pod to be Running through HTTPS")
        assert "Ready" in await cluster.kubectl("get", "node", "edge1")
        # Without a client certificate or a known token the API server refuses.
        stranger = tmp_path / "stranger"
        config = json.loads(cluster.kubeconfig.read_text())
        config["users"][0]["user"] = {"token": "not-a-known-token"}
        stranger.write_text(json.dumps(config))
        code, out, err = await cluster.kubectl_status("--kubeconfig", str(stranger), "get", "pods")
        assert code != 0 and "web" not in out and "Unauthorized" in err
    finally:
        await node.terminate()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No such file"),
        ("current-context: x\nclusters: []\ncontexts: []\n", "no context named 'x'"),
        (
            "current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
            "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1',\n"
            "  certificate-authority-data: Zm9v}}]\n"
            "users: [{name: u, user: {}}]\n",
            "cannot load its certificates",
        ),
    ],
)
async def test_bad_kubeconfig_is_refused_at_start(
    containerd: Any, tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "kubeconfig"
    if content is not None:
        path.write_text(content)
    node = VnodeProcess(tmp_path, containerd.endpoint, extra_args=["--kubeconfig", str(path)])
    await node.start(wait=False)
    assert node.proc is not None
    assert await node.proc.wait() == 2
    log = node.log_tail()
    assert "--kubeconfig" in log and message in log


async def test_events_are_posted_and_aggregated(cluster: ClusterView, node: VnodeProcess) -> None:
    crash = POD.replace("name: web", "name: crash").replace(
        "trap 'exit 0' TERM; echo started; sleep 3600 & wait", "exit 1"
    )
    await cluster.kubectl("apply", "-f", "-", stdin=crash.encode())

    async def events() -> dict[str, dict[str, Any]] | None:
        body = await get_json(cluster, "events", "--field-selector", "involvedObject.name=crash")
        by_reason = {e["reason"]: e for e in (body or {}).get("items") or []}
        return by_reason if {"Created", "Started", "BackOff"} <= set(by_reason) else None

    seen = await wait_for(events, timeout=60, what="Created, Started and BackOff events")
    assert seen["Started"]["source"] == {"component": "kubelet", "host": "edge1"}
    assert seen["Started"]["involvedObject"]["kind"] == "Pod"

    async def aggregated() -> bool:
        body = await get_json(cluster, "events", "--field-selector", "involvedObject.name=crash")
        started = [e for e in (body or {}).get("items") or [] if e["reason"] == "Started"]
        return len(started) == 1 and started[0]["count"] >= 2

    await wait_for(aggregated, timeout=60, what="repeated Started events aggregated into one with count 2")


async def test_static_pod_has_a_mirror_pod_recreated_if_deleted(
    cluster: ClusterView, node: VnodeProcess
) -> None:
    static = busybox_pod("static", "sleep 3600")
    static["metadata"]["namespace"] = cluster.namespace
    node.write_manifest("static.yaml", static)

    def mirror() -> Awaitable[dict[str, Any] | None]:
        return api_running(cluster, "static-edge1")

    first = await wait_for(mirror, what="the mirror pod with a running status")
    annotations = first["metadata"]["annotations"]
    assert annotations["kubernetes.io/config.source"] == "file"
    assert annotations["kubernetes.io/config.mirror"] == annotations["kubernetes.io/config.hash"]
    assert first["metadata"]["ownerReferences"][0]["kind"] == "Node"
    assert len(await node.pods()) == 1  # the mirror is not run a second time

    await cluster.kubectl("delete", "pod", "static-edge1", "--grace-period=0", "--wait=false")

    async def recreated() -> dict[str, Any] | None:
        pod = await mirror()
        return pod if pod is not None and pod["metadata"]["uid"] != first["metadata"]["uid"] else None

    await wait_for(recreated, what="the mirror pod to be recreated")
    (node.manifests / "static.yaml").unlink()

    async def gone() -> bool:
        return await get_json(cluster, "pod", "static-edge1") is None

    await wait_for(gone, what="the mirror pod to go with its manifest")


CONFIGURED = """
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello-1, mode: edge}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
data: {password: c2VjcmV0}
---
apiVersion: v1
kind: Pod
metadata: {name: configured}
spec:
  nodeName: edge1
  hostNetwork: true
  terminationGracePeriodSeconds: 2
  volumes:
    - {name: cfg, configMap: {name: settings}}
    - {name: opt, configMap: {name: absent, optional: true}}
  containers:
    - name: main
      image: docker.io/library/busybox:1.35
      env:
        - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
        - {name: NOTHING, valueFrom: {configMapKeyRef: {name: absent, key: x, optional: true}}}
      envFrom: [{prefix: CFG_, configMapRef: {name: settings}}]
      volumeMounts: [{name: cfg, mountPath: /etc/cfg}, {name: opt, mountPath: /etc/opt}]
      command: [sh, -c, 'echo "env $PASSWORD $CFG_mode ${NOTHING:-unset}"; while true; do
        echo "file $(cat /etc/cfg/greeting)"; sleep 1; done']
"""


async def test_config_maps_and_secrets_reach_files_and_env(cluster: ClusterView, node: VnodeProcess) -> None:
    await cluster.kubectl("apply", "-f", "-", stdin=CONFIGURED.encode())
    await wait_for(lambda: api_running(cluster, "configured"), what="the configured pod to run")

    await node.log_containing("configured", "main", b"env secret edge unset", namespace=cluster.namespace)
    await node.log_containing("configured", "main", b"file hello-1", namespace=cluster.namespace)
    updated = CONFIGURED.split("---")[0].replace("hello-1", "hello-2")
    await cluster.kubectl("apply", "-f", "-", stdin=updated.encode())
    await node.log_containing(
        "configured", "main", b"file hello-2", namespace=cluster.namespace
    )  # refreshed within ~35 s


async def test_missing_config_map_is_a_config_error(cluster: ClusterView, node: VnodeProcess) -> None:
    pod = CONFIGURED.split("---")[2].replace("name: configured", "name: lacking")
    await cluster.kubectl("apply", "-f", "-", stdin=pod.encode())

    async def waiting() -> dict[str, Any] | None:
        obj = await get_json(cluster, "pod", "lacking")
        statuses = ((obj or {}).get("status") or {}).get("containerStatuses") or []
        state = statuses[0]["state"] if statuses else {}
        return state.get("waiting") if state.get("waiting", {}).get("reason") == "ContainerCreating" else None

    state = await wait_for(waiting, what="ContainerCreating while the configMap is missing")
    assert 'configmap "settings" not found' in state.get("message", "")


PROJECTED = """
apiVersion: v1
kind: ConfigMap
metadata: {name: ca}
data: {ca.crt: test-ca}
---
apiVersion: v1
kind: Pod
metadata: {name: projected, labels: {tier: edge}}
spec:
  nodeName: edge1
  hostNetwork: true
  terminationGracePeriodSeconds: 2
  volumes:
    - name: sa
      projected:
        sources:
          - serviceAccountToken: {path: token, audience: vnode-test, expirationSeconds: 3600}
          - configMap: {name: ca, items: [{key: ca.crt, path: ca.crt}]}
          - downwardAPI: {items: [{path: namespace, fieldRef: {fieldPath: metadata.namespace}}]}
    - name: info
      downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: "metadata.labels['tier']"}}]}
  containers:
    - name: main
      image: docker.io/library/busybox:1.35
      volumeMounts: [{name: sa, mountPath: /var/run/secrets/sa}, {name: info, mountPath: /etc/info}]
      command: [sh, -c, 'cd /var/run/secrets/sa; echo "ns=$(cat namespace) ca=$(cat ca.crt)
        tier=$(cat /etc/info/labels) dots=$(tr -cd . < token | wc -c)"; sleep 3600']
"""


async def test_projected_token_and_downward_api_volumes(cluster: ClusterView, node: VnodeProcess) -> None:
    await cluster.kubectl("apply", "-f", "-", stdin=PROJECTED.encode())
    await wait_for(lambda: api_running(cluster, "projected"), what="the projected pod to run")
    body = await node.log_containing("projected", "main", b"ns=", namespace=cluster.namespace)
    expected = f"ns={cluster.namespace} ca=test-ca tier=edge dots=2"
    assert expected.encode() in body  # a three-part JWT from TokenRequest


async def test_kubectl_logs_follow_delivers_a_line_after_two_silent_minutes(idle_follow: IdleFollow) -> None:
    """The acceptance check: both follow streams stay open through the pod's silence and deliver
    the line it prints afterwards (this module's other tests ran during the silence)."""
    for follower in idle_follow.followers:
        try:
            after = await _arrival(follower, "after-idle", IDLE_SECONDS + 90)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}: {follower.lines} (exit {follower.proc.returncode})\n{idle_follow.node.log_tail()}"
            ) from None
        before = follower.arrived("before-idle")
        assert before is not None and after - before >= 120, follower.lines
        assert follower.proc.returncode is None  # still following
