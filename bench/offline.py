"""Offline-autonomy benchmarks: restart without the control plane, catch-up, the store.

    .venv/bin/python -m bench.offline [--pods 50] [--outage 60] [--records 1000]

- Restart recovery: N pods from the API run; vnode is SIGKILLed and started again, first with its
  master up (the baseline), then with no master answering: seconds until the kubelet API answers,
  until every pod is re-adopted (``/healthz`` passes, same container IDs), and until the local API
  lists all N pods.
- Catch-up: during an outage of ``--outage`` seconds, N/5 more pods crash-loop (status churn);
  then the master returns. Seconds until the API agrees with the node (every pod's phase and
  restartCount, read through another master of the same cluster), and the requests the node sent
  meanwhile by kind (its master's counters), beside the restarts the node went through offline.
- Store: ``--records`` pod records (a realistic pod with its status, ~1.7 KiB of JSON) written one by one,
  written concurrently (group commit), and read, beside sqlite3 (WAL, synchronous=FULL) doing the
  same in the same run; bytes used for them.

Run as root (the harness starts its own containerd). Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.cluster import counts, poll
from bench.standalone import readopt
from integration.containerd import Containerd
from integration.controlplane import ControlPlaneProcess
from integration.node import VnodeProcess
from vnode.store import Put, Store

POD = """
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: bench}}}}
spec:
  nodeName: benchnode
  hostNetwork: true
  terminationGracePeriodSeconds: 2
  containers: [{{name: main, image: docker.io/library/busybox:1.35, command: [sh, -c, "{command}"]}}]
"""


async def local_pods(node: VnodeProcess) -> list[dict[str, Any]]:
    """The pods the node's local API lists (the operator's ``kubectl get pods``)."""
    token = (node.root_dir / "local.token").read_text().strip()
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    url = f"https://127.0.0.1:{node.local_api_port}/api/v1/pods"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": f"Bearer {token}"}, ssl=context) as resp,
    ):
        body: dict[str, Any] = await resp.json()
        return list(body.get("items") or [])


async def restart(node: VnodeProcess, n: int) -> tuple[float, float, float]:
    """(API serving, all re-adopted, local API lists all N) seconds after a SIGKILL and start."""
    start = time.perf_counter()
    serving, adopted = await readopt(node, n)

    async def listed() -> bool:
        try:
            return len(await local_pods(node)) == n
        except (OSError, aiohttp.ClientError, ValueError):
            return False

    await poll(listed, interval=0.01)
    return serving, adopted, time.perf_counter() - start


async def api_view(plane: ControlPlaneProcess) -> dict[str, tuple[str, int]]:
    body = json.loads(await plane.kubectl("get", "pods", "-o", "json"))
    view = {}
    for pod in body["items"]:
        status = pod.get("status") or {}
        restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or [])
        view[pod["metadata"]["name"]] = (status.get("phase", ""), restarts)
    return view


async def node_view(node: VnodeProcess) -> dict[str, tuple[str, int]]:
    view = {}
    for name, pod in (await node.pods()).items():
        status = pod.get("status") or {}
        restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or [])
        view[name] = (status.get("phase", ""), restarts)
    return view


async def cluster_benchmarks(pods: int, outage: float) -> None:
    harness = Containerd()
    await asyncio.to_thread(harness.start)
    base = Path(tempfile.mkdtemp(prefix="vnode-bench-offline-"))
    plane = ControlPlaneProcess(base)
    await plane.start()
    node = VnodeProcess(
        base, harness.endpoint, node_name="benchnode", extra_args=["--master", plane.url, "-v=0"]
    )
    try:
        await node.start()
        names = [f"p{i}" for i in range(pods)]
        churners = [f"churn{i}" for i in range(max(1, pods // 5))]
        manifest = "\n---\n".join(POD.format(name=n, command="sleep 3600") for n in names)
        await plane.kubectl("apply", "-f", "-", stdin=manifest.encode())

        async def all_running() -> bool:
            view = await api_view(plane)
            return len(view) == pods and all(phase == "Running" for phase, _ in view.values())

        await poll(all_running, interval=0.5)
        print(f"restart recovery with {pods} pods (median of 3):")
        for label, up in (("master up (baseline)", True), ("no master answering", False)):
            if not up:
                await plane.kill()
            results = sorted([await restart(node, pods) for _ in range(3)], key=lambda r: r[1])
            serving, adopted, listed = results[1]
            print(f"  {label:22s} API serving {serving:.3f} s, all adopted {adopted:.3f} s, "
                  f"local API lists all {listed:.3f} s")  # fmt: skip

        # Catch-up: churn while offline, then the master returns.
        plane = ControlPlaneProcess(base, store=plane.store, port=plane.port)
        await plane.start()
        await poll(lambda: api_matches(plane, node), interval=0.5)
        churn = "\n---\n".join(POD.format(name=n, command="sleep 5; exit 1") for n in churners)
        await plane.kubectl("apply", "-f", "-", stdin=churn.encode())
        await poll(lambda: api_matches(plane, node), interval=0.5)
        await plane.kill()
        before = await node_view(node)
        await asyncio.sleep(outage)
        after = await node_view(node)
        changes = sum(after[n][1] - before.get(n, ("", 0))[1] for n in after)
        # The benchmark reads the API through an observer master of the same cluster, so that the
        # node's own master counts only what the node sends.
        observer = ControlPlaneProcess(base, store=plane.store)
        await observer.start()
        plane = ControlPlaneProcess(base, store=plane.store, port=plane.port)
        start = time.perf_counter()
        try:
            await plane.start()
            await poll(lambda: api_matches(observer, node), interval=0.2)
        finally:
            await observer.kill()
        took = time.perf_counter() - start
        requests = await counts(plane)
        status_writes = sum(v for k, v in requests.items() if k.startswith("PATCH") and k.endswith("/status"))
        print(f"catch-up after {outage:.0f} s offline, {pods} steady + {len(churners)} crash-looping "
              f"pods ({changes} restarts offline): API consistent {took:.2f} s after the master's start; "
              f"{status_writes} status writes, {sum(requests.values())} requests in all")  # fmt: skip
        for key, value in sorted(requests.items(), key=lambda kv: -kv[1])[:8]:
            print(f"  {value:5d}  {key}")
    finally:
        if node.proc is not None and node.proc.returncode is None:
            await node.terminate()
        await plane.kill()
        await asyncio.to_thread(harness.stop)


async def api_matches(plane: ControlPlaneProcess, node: VnodeProcess) -> bool:
    try:
        api, local = await api_view(plane), await node_view(node)
    except (OSError, AssertionError, ValueError, aiohttp.ClientError):
        return False
    return api == local


def pod_record(i: int) -> dict[str, Any]:
    """A pod as the store keeps it: spec from the API and its last status (~1.7 KiB of JSON)."""
    container = {
        "name": "main",
        "image": "registry.example/edge/app:1.4.2",
        "command": ["/app", "--config=/etc/app/config.yaml", "--listen=:8080"],
        "env": [{"name": f"VAR_{k}", "value": f"value-{k}"} for k in range(8)],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}],
    }
    return {
        "pod": {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"app-{i}",
                "namespace": "edge",
                "uid": f"0000-{i:08d}",
                "labels": {"app": "edge-app", "tier": "worker", "site": "factory-3"},
                "annotations": {"kubernetes.io/config.hash": f"{i:032x}"},
            },
            "spec": {
                "nodeName": "edge1",
                "containers": [container],
                "volumes": [{"name": "config", "configMap": {"name": "app-config"}}],
            },
        },
        "status": {
            "phase": "Running",
            "hostIP": "10.0.0.5",
            "podIP": f"10.88.{i // 250}.{i % 250}",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": "2026-11-24T10:00:00Z"}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "containerStatuses": [
                {
                    "name": "main",
                    "ready": True,
                    "restartCount": 0,
                    "containerID": f"containerd://{i:064x}",
                    "image": container["image"],
                    "state": {"running": {"startedAt": "2026-11-24T10:00:01Z"}},
                }
            ],
        },
    }


async def store_benchmark(records: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="vnode-bench-store-"))
    rows = [(f"0000-{i:08d}", pod_record(i)) for i in range(records)]
    size = sum(len(json.dumps(r)) for _, r in rows) / records
    store = await Store.open(base / "store", map_size=64 << 20)
    try:
        start = time.perf_counter()
        for key, value in rows[: records // 10]:
            await store.put("pods", key, value)
        one_by_one = (records // 10) / (time.perf_counter() - start)
        start = time.perf_counter()
        await asyncio.gather(*(store.write([Put("pods", k, v)]) for k, v in rows))
        concurrent = records / (time.perf_counter() - start)
        start = time.perf_counter()
        for key, _ in rows:
            store.get("pods", key)
        reads = records / (time.perf_counter() - start)
        used = store.info()["used"]
    finally:
        await store.close()

    db = sqlite3.connect(base / "baseline.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE pods (key TEXT PRIMARY KEY, value TEXT)")
    start = time.perf_counter()
    for key, value in rows[: records // 10]:
        db.execute("INSERT OR REPLACE INTO pods VALUES (?, ?)", (key, json.dumps(value)))
    sqlite_one = (records // 10) / (time.perf_counter() - start)
    start = time.perf_counter()
    db.execute("BEGIN")
    db.executemany("INSERT OR REPLACE INTO pods VALUES (?, ?)", [(k, json.dumps(v)) for k, v in rows])
    db.execute("COMMIT")
    sqlite_batch = records / (time.perf_counter() - start)
    start = time.perf_counter()
    for key, _ in rows:
        json.loads(db.execute("SELECT value FROM pods WHERE key = ?", (key,)).fetchone()[0])
    sqlite_reads = records / (time.perf_counter() - start)
    db.close()
    print(f"store, {records} pod records of {size / 1024:.1f} KiB; rates per second beside sqlite3 "
          "(WAL, synchronous=FULL) in the same run:")  # fmt: skip
    table = [
        ("one by one, durable each", one_by_one, "one by one", sqlite_one),
        ("concurrent (group commit)", concurrent, "one transaction", sqlite_batch),
        ("reads", reads, "reads", sqlite_reads),
    ]
    for label, ours, theirs, base_rate in table:
        print(
            f"  {label:26s} {ours:9.0f}  sqlite3 {theirs:15s} {base_rate:9.0f}  ratio {ours / base_rate:.2f}"
        )
    each = used / records / 1024
    print(f"  size on disk: {used / (1 << 20):.1f} MiB for {records} pods ({each:.1f} KiB a pod)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument(
        "--outage", type=float, default=60.0, help="seconds offline (the issue's 10 minutes: 600)"
    )
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--skip-cluster", action="store_true", help="only the store benchmark")
    args = parser.parse_args()
    asyncio.run(store_benchmark(args.records))
    if not args.skip_cluster:
        asyncio.run(cluster_benchmarks(args.pods, args.outage))


if __name__ == "__main__":
    main()
