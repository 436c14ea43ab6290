"""Resource stats on a real containerd: a busy pod's CPU and memory as the summary, the resource
metrics (decoded with metrics-server's rules) and the local API report them, pod numbers from the
pod cgroup every sandbox now has, and disk pressure with image reclaim and the transition period.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from integration.containerd import Containerd
from integration.fakestats import FakePod, FakeStatsRuntime
from integration.images import NAMESPACE, pause_layer, write_oci
from integration.node import VnodeProcess, busybox_pod, is_running, running_node, wait_for
from tests.metrics_server_rules import decode
from vnode.runtime import labels
from vnode.runtime.cri import CriClient

MiB = 1 << 20
GiB = 1 << 30


def busy_pod(trigger: Path) -> dict[str, Any]:
    """Two containers: ``burn`` spins a core; ``alloc`` writes 2 MiB into an emptyDir, then fills
    48 MiB of the pod's shared memory (tmpfs pages are charged to the writer's cgroup, and stay)
    once ``trigger/go`` exists."""
    pod = busybox_pod("busy", "while :; do :; done", container_name="burn")
    alloc = {
        "name": "alloc",
        "image": "docker.io/library/busybox:1.35",
        "command": ["sh", "-c", "dd if=/dev/zero of=/scratch/f bs=1M count=2; "
                    "until [ -f /trigger/go ]; do sleep 0.2; done; "
                    "dd if=/dev/zero of=/dev/shm/fill bs=1M count=48; touch /trigger/held; sleep 3600"],
        "volumeMounts": [{"name": "trigger", "mountPath": "/trigger"},
                         {"name": "scratch", "mountPath": "/scratch"}],
    }  # fmt: skip
    pod["spec"]["containers"].append(alloc)
    pod["spec"]["volumes"] = [
        {"name": "trigger", "hostPath": {"path": str(trigger)}},
        {"name": "scratch", "emptyDir": {}},
    ]
    # a uid of its own: pod cgroups are the host's, shared by every harness on the machine, and a
    # static pod's uid is its manifest's hash
    pod["metadata"]["annotations"] = {"test/run": secrets.token_hex(8)}
    return pod


async def summary(node: VnodeProcess, **params: str) -> dict[str, Any]:
    code, body = await node.get("/stats/summary", **params)
    assert code == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


def pod_entry(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((p for p in doc["pods"] if p["podRef"]["name"] == name), None)


async def test_busy_pod_cpu_memory_and_the_metrics_that_report_them(
    containerd: Containerd, cri: CriClient, tmp_path: Path
) -> None:
    trigger = tmp_path / "trigger"
    trigger.mkdir()
    async with running_node(tmp_path, containerd.endpoint) as node:
        node.write_manifest("busy.yaml", busy_pod(trigger))
        await node.wait_pod("busy", lambda p: is_running(p, "burn", "alloc"), what="busy running")
        name = node.static_name("busy")

        async def burning() -> dict[str, Any] | None:
            entry = pod_entry(await summary(node), name)
            containers = {c["name"]: c for c in (entry or {}).get("containers", [])}
            cores = containers.get("burn", {}).get("cpu", {}).get("usageNanoCores", 0)
            return entry if cores > 0.5e9 else None

        entry = await wait_for(burning, timeout=120, what="burn above half a core")
        # every sandbox has a pod cgroup, so containerd's pod stats work for this node's pods
        uid = entry["podRef"]["uid"]
        listed = await cri.list_pod_sandbox_stats({labels.NODE_LABEL: node.node_name})
        assert uid in {s.attributes.metadata.uid for s in listed}
        await compare_with_the_stand_in(cri, node.node_name)
        containers = {c["name"]: c for c in entry["containers"]}
        assert set(containers) == {"burn", "alloc"}
        total_cpu = sum(c["cpu"]["usageCoreNanoSeconds"] for c in containers.values())
        total_ws = sum(c["memory"]["workingSetBytes"] for c in containers.values())
        # the pod cgroup: its containers plus the pause process (a few hundred KiB, ~no CPU)
        assert total_cpu * 0.95 <= entry["cpu"]["usageCoreNanoSeconds"] <= total_cpu * 1.05 + 1e8
        assert total_ws - MiB <= entry["memory"]["workingSetBytes"] <= total_ws + 8 * MiB
        before = containers["alloc"]["memory"]["workingSetBytes"]
        assert entry["process_stats"]["process_count"] >= 3
        assert entry["ephemeral-storage"]["usedBytes"] >= 0 and "logs" in containers["burn"]

        (trigger / "go").touch()

        async def grown() -> int | None:
            current = pod_entry(await summary(node), name) or {}
            alloc = next((c for c in current.get("containers", []) if c["name"] == "alloc"), {})
            ws = int(alloc.get("memory", {}).get("workingSetBytes", 0))
            return ws if ws > before + 40 * MiB else None

        await wait_for(grown, timeout=60, what="alloc's working set to grow by 48 MiB")

        doc = await summary(node)
        busy = pod_entry(doc, name) or {}
        volumes = {v["name"]: v for v in busy["volume"]}
        assert set(volumes) == {"scratch"}  # the node's own volumes, not a hostPath
        assert volumes["scratch"]["usedBytes"] >= 2 * MiB and volumes["scratch"]["capacityBytes"] > 0
        assert busy["ephemeral-storage"]["usedBytes"] >= 2 * MiB  # an emptyDir on the node's disk counts
        node_stats = doc["node"]
        assert node_stats["nodeName"] == node.node_name
        wanted = {"cpu", "memory", "fs", "runtime", "rlimit", "systemContainers", "startTime"}
        assert wanted <= set(node_stats)
        assert node_stats["memory"]["workingSetBytes"] > 0 and node_stats["fs"]["capacityBytes"] > 0
        image_fs = node_stats["runtime"]["imageFs"]  # used: containerd refreshes it every 10 s
        assert image_fs["capacityBytes"] > 0 and image_fs["usedBytes"] >= 0
        assert node_stats["rlimit"]["maxpid"] > node_stats["rlimit"]["curproc"] > 0

        small = await summary(node, only_cpu_and_memory="true")
        assert set(small["node"]) == {"nodeName", "systemContainers", "startTime", "cpu", "memory"}
        small_pod = pod_entry(small, name)
        assert small_pod is not None
        assert set(small_pod) == {"podRef", "startTime", "containers", "cpu", "memory"}

        code, body = await node.get("/metrics/resource")
        assert code == 200
        decoded = decode(body.decode())
        assert not decoded.problems, decoded.problems
        assert set(decoded.pods[("default", name)]) == {"burn", "alloc"}

        code, body = await node.get("/metrics")
        assert code == 200
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert families["kubelet_running_pods"].samples[0].value == 1
        ops = {s.labels["operation_type"] for s in families["kubelet_runtime_operations"].samples}
        assert {"run_pod_sandbox", "list_pod_sandbox_stats"} <= ops
        assert "process_resident_memory_bytes" in families

        # the same through the local API, as the API server would route it (nodes/proxy)
        token = (node.root_dir / "local.token").read_text().strip()
        url = f"https://127.0.0.1:{node.local_api_port}/api/v1/nodes/{node.node_name}/proxy/stats/summary"
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, headers={"Authorization": f"Bearer {token}"}, ssl=False) as resp,
        ):
            assert resp.status == 200
            assert pod_entry(await resp.json(), name) is not None


def fields(message: Any, prefix: str = "") -> set[str]:
    """The paths of the fields a message has set (repeated ones by their first element)."""
    out = set()
    for descriptor, value in message.ListFields():
        path = prefix + descriptor.name
        out.add(path)
        if descriptor.message_type is None or descriptor.message_type.GetOptions().map_entry:
            continue
        item = value if hasattr(value, "ListFields") else value[0]  # a message, or a repeated field
        if item is not None and hasattr(item, "ListFields"):
            out |= fields(item, path + ".")
    return out


async def compare_with_the_stand_in(cri: CriClient, node_name: str) -> None:
    """integration.fakestats answers with the fields this containerd sets, and no others."""
    selector = {labels.NODE_LABEL: node_name}
    fake = FakeStatsRuntime([FakePod("p", host_network=True)], node_name)  # as the busy pod
    calls = ["list_container_stats", "list_pod_sandbox_stats", "list_containers", "list_pod_sandboxes"]
    for call in [*calls, "image_fs_info"]:
        args = () if call == "image_fs_info" else (selector,)
        real = fields((await getattr(cri, call)(*args))[0])
        stand_in = fields((await getattr(fake, call)(*args))[0])
        # a UInt64Value of 0 has no "value" set in proto3: compare which values are there, not zeros
        real, stand_in = ({f.removesuffix(".value").removeprefix("linux.containers.") for f in x}
                          for x in (real, stand_in))  # fmt: skip
        ignored = {"annotations", "attributes.annotations", "image", "image.image", "image_ref", "image_id",
                   "runtime_handler", "metadata.attempt", "metadata.namespace"}  # fmt: skip
        late = {"writable_layer.timestamp"}  # containerd fills it at its next snapshot scan (10 s)
        missing, extra = real - stand_in - ignored, stand_in - real - late
        assert not missing and not extra, f"{call}: stand-in lacks {sorted(missing)}, adds {sorted(extra)}"


def extra_image(base: Path) -> Path:
    """An OCI archive of an image nothing uses (the pause layer under another name and config)."""
    path = base / "unused.tar"
    write_oci(path, "docker.io/library/vnode-unused:1", pause_layer(),
              {"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/pause"],
               "Labels": {"vnode.test": "unused"}}})  # fmt: skip
    return path


async def test_disk_pressure_reclaims_unused_images_and_clears_after_the_transition(
    containerd: Containerd, cri: CriClient, tmp_path: Path
) -> None:
    archive = extra_image(tmp_path)
    await run("ctr", "--address", containerd.address, "-n", NAMESPACE, "images", "import", str(archive))
    unused = await cri.image_ref("docker.io/library/vnode-unused:1")
    assert unused is not None
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    threshold = free - 2 * GiB  # crossed once the test takes 4 GiB, clear without it
    args = [f"--eviction-hard=nodefs.available<{threshold}", "--eviction-pressure-transition-period=6s",
            "--housekeeping-interval=1s"]  # fmt: skip
    async with running_node(tmp_path, containerd.endpoint, extra_args=args) as node:
        node.write_manifest("user.yaml", busybox_pod("user", "sleep 3600"))
        await node.wait_pod("user", lambda p: is_running(p, "main"), what="user running")
        used = await cri.image_ref("docker.io/library/busybox:1.35")
        ballast = tmp_path / "ballast"
        await run("fallocate", "-l", str(4 * GiB), str(ballast))
        try:
            await wait_for(
                lambda: _event(node, "NodeHasDiskPressure"), timeout=30, what="NodeHasDiskPressure"
            )
            condition = (await local_node_conditions(node))["DiskPressure"]
            assert (condition["status"], condition["reason"]) == ("True", "KubeletHasDiskPressure")
            assert condition["message"] == "kubelet has disk pressure"
            assert await cri.image_ref("docker.io/library/vnode-unused:1") is None  # removed
            assert await cri.image_ref("docker.io/library/busybox:1.35") == used  # in use: kept
            assert await cri.image_ref("registry.k8s.io/pause:3.6") is not None  # the sandbox image
            flipped_on = asyncio.get_running_loop().time()
        finally:
            ballast.unlink()
        await wait_for(
            lambda: _event(node, "NodeHasNoDiskPressure"), timeout=30, what="NodeHasNoDiskPressure"
        )
        held = asyncio.get_running_loop().time() - flipped_on
        # the last crossing was seen at most one check (1 s) before the test saw the flip
        assert held >= 5, f"the condition cleared {held:.1f}s after it was set, within the transition period"
        condition = (await local_node_conditions(node))["DiskPressure"]
        assert (condition["status"], condition["reason"]) == ("False", "KubeletHasNoDiskPressure")


async def run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, f"{argv[0]} failed: {out.decode(errors='replace')}"


async def local_node_conditions(node: VnodeProcess) -> dict[str, dict[str, Any]]:
    """The Node's conditions as the node's local API shows it (standalone: built by the node)."""
    token = (node.root_dir / "local.token").read_text().strip()
    url = f"https://127.0.0.1:{node.local_api_port}/api/v1/nodes/{node.node_name}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": f"Bearer {token}"}, ssl=False) as resp,
    ):
        assert resp.status == 200
        return {c["type"]: c for c in (await resp.json())["status"]["conditions"]}


async def _event(node: VnodeProcess, reason: str) -> bool:
    """Whether the node's log shows the Node Event ``reason``."""
    text = node.log_file.read_text(errors="replace")
    return f"Node {node.node_name} status is now: {reason}" in text


async def test_memory_pressure_evicts_the_pod_most_over_its_request_first(
    containerd: Containerd, tmp_path: Path
) -> None:
    """A threshold above the machine's memory keeps the node under memory pressure: one pod goes per
    check, the BestEffort one before the one within its request."""
    total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    args = [f"--eviction-hard=memory.available<{total + GiB}", "--housekeeping-interval=3s"]
    keeper = busybox_pod("keeper", "sleep 3600")
    keeper["spec"]["containers"][0]["resources"] = {
        "requests": {"memory": "64Mi"},
        "limits": {"memory": "64Mi"},
    }
    hog = busybox_pod("hog", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=8; sleep 3600")
    async with running_node(tmp_path, containerd.endpoint, extra_args=args) as node:
        node.write_manifest("pods.yaml", keeper, hog)

        async def evicted() -> dict[str, Any] | None:
            pod = await node.pod(node.static_name("hog"))
            return pod if (pod or {}).get("status", {}).get("reason") == "Evicted" else None

        pod = await wait_for(evicted, timeout=90, what="hog evicted")
        status = pod["status"]
        assert status["phase"] == "Failed"
        assert status["message"].startswith("The node was low on resource: memory. Threshold quantity: ")
        log = node.log_file.read_text(errors="replace")
        first = log.index(" Evicted: The node was low on resource")  # the first eviction's Event
        assert log[first - 200 : first].endswith(f"pod/default/{node.static_name('hog')}")  # hog went first

        async def stopped() -> bool:
            current = await node.pod(node.static_name("hog")) or {}
            states = [s["state"] for s in current.get("status", {}).get("containerStatuses", [])]
            return bool(states) and all("terminated" in s for s in states)

        await wait_for(stopped, timeout=60, what="hog's container stopped")
