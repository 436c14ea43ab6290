"""Cluster-mode benchmarks against a real control plane (or the imitation) and a real containerd.

    .venv/bin/python -m bench.cluster [--pods 20] [--idle 60] [--plane real|imitation] [--objects]

- API load: requests per minute the node sends while idle with N running pods from the API, by
  kind of request (read from kube-apiserver's audit log for the node's user, or from the
  imitation's request counters). Kubelet's steady state is 6 Lease renewals a minute plus changed
  statuses (a node status report every 5 minutes).
- With ``--objects``, each pod mounts a configMap and a secret of its own (and the projected
  service-account token admission adds to every pod), the issue's idle node; after the idle window
  one configMap is edited and the time until the pod prints the new value from its mounted file
  is measured.
- Start latency: ``kubectl apply`` of one pod with ``nodeName`` to status Running in the API,
  beside the standalone start of the same pod (manifest to Running in ``/pods``) in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from integration.containerd import Containerd
from integration.controlplane import ControlPlaneProcess
from integration.kube import KubeCluster
from integration.kube.view import ClusterView
from integration.node import VnodeProcess, busybox_pod, is_running

Plane = ControlPlaneProcess | ClusterView

POD = """
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: benchnode
  hostNetwork: true
  terminationGracePeriodSeconds: 2
  containers: [{{name: main, image: docker.io/library/busybox:1.35, command: [sleep, "3600"]}}]
"""


OBJECTS = """
apiVersion: v1
kind: ConfigMap
metadata: {{name: cm-{name}}}
data: {{value: v1}}
---
apiVersion: v1
kind: Secret
metadata: {{name: s-{name}}}
stringData: {{password: p}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: benchnode
  hostNetwork: true
  terminationGracePeriodSeconds: 2
  volumes:
    - {{name: cfg, configMap: {{name: cm-{name}}}}}
    - {{name: sec, secret: {{secretName: s-{name}}}}}
  containers:
    - name: main
      image: docker.io/library/busybox:1.35
      volumeMounts: [{{name: cfg, mountPath: /etc/cfg}}, {{name: sec, mountPath: /etc/sec}}]
      command: [sh, -c, {command}]
"""
WATCHING = "'while true; do echo \"value=$(cat /etc/cfg/value)\"; sleep 1; done'"


async def counts(plane: Plane) -> dict[str, int]:
    if isinstance(plane, ClusterView):
        return await asyncio.to_thread(plane.kube.requests_of, "system:node:benchnode")
    async with aiohttp.ClientSession() as session, session.get(f"{plane.url}/debug/requests") as resp:
        result: dict[str, int] = await resp.json()
        return result


async def api_running(plane: Plane, names: list[str]) -> bool:
    body = json.loads(await plane.kubectl("get", "pods", "-o", "json"))
    phases = {p["metadata"]["name"]: p.get("status", {}).get("phase") for p in body["items"]}
    return all(phases.get(n) == "Running" for n in names)


async def poll(probe: Any, interval: float = 0.05) -> float:
    start = time.perf_counter()
    while not await probe():  # noqa: ASYNC110 - the state is in other processes; polling is all there is
        await asyncio.sleep(interval)
    return time.perf_counter() - start


async def run(pods: int, idle: float, real: bool, objects: bool) -> None:
    harness = Containerd()
    await asyncio.to_thread(harness.start)
    base = Path(tempfile.mkdtemp(prefix="vnode-bench-cluster-"))
    kube: KubeCluster | None = None
    plane: Plane
    if real:
        kube = KubeCluster(base / "kube", masters=1, audit=True)
        await asyncio.to_thread(kube.start)
        plane = await ClusterView(kube, "bench").open()
        args = plane.node_args("benchnode")
    else:
        plane = ControlPlaneProcess(base)
        await plane.start()
        args = ["--master", plane.url]
    node = VnodeProcess(base, harness.endpoint, node_name="benchnode", extra_args=[*args, "-v=0"])
    try:
        print(f"control plane: {'kube-apiserver ' + kube.bin.parent.name if kube else 'the imitation'}")
        await node.start()
        # Start latency: one pod through the API, one static pod, same image, same node.
        start = time.perf_counter()
        await plane.kubectl("apply", "-f", "-", stdin=POD.format(name="first").encode())
        await poll(lambda: api_running(plane, ["first"]))
        via_api = time.perf_counter() - start
        start = time.perf_counter()
        static = busybox_pod("static", "sleep 3600")
        if isinstance(plane, ClusterView):
            static["metadata"]["namespace"] = plane.namespace
        node.write_manifest("static.yaml", static)

        async def static_running() -> bool:
            found = (await node.pods()).get(node.static_name("static"))
            return found is not None and is_running(found, "main")

        await poll(static_running)
        standalone = time.perf_counter() - start
        print(f"start: kubectl apply -> Running in the API {via_api:.3f} s; static pod -> Running "
              f"{standalone:.3f} s (ratio {via_api / standalone:.2f})")  # fmt: skip

        names = [f"p{i}" for i in range(pods)]
        if objects:
            manifest = "\n---\n".join(
                OBJECTS.format(name=n, command=WATCHING if i == 0 else '"sleep 3600"')
                for i, n in enumerate(names)
            )
        else:
            manifest = "\n---\n".join(POD.format(name=n) for n in names)
        await plane.kubectl("apply", "-f", "-", stdin=manifest.encode())
        await poll(lambda: api_running(plane, names), interval=0.5)
        await asyncio.sleep(15)  # let the start-up writes settle
        before = await counts(plane)
        await asyncio.sleep(idle)
        after = await counts(plane)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        total = sum(delta.values()) * 60 / idle
        print(f"idle with {pods + 2} pods over {idle:.0f} s: {total:.1f} requests/minute")
        for key, value in sorted(delta.items(), key=lambda kv: -kv[1]):
            print(f"  {value * 60 / idle:6.1f}/min  {key}")
        if objects:
            namespace = plane.namespace if isinstance(plane, ClusterView) else "default"
            start = time.perf_counter()
            await plane.kubectl(
                "patch", "configmap", "cm-p0", "--type=merge", "-p", '{"data":{"value":"v2"}}'
            )

            async def edited() -> bool:
                status, body = await node.get(f"/containerLogs/{namespace}/p0/main", tailLines="2")
                return status == 200 and b"value=v2" in body

            await poll(edited, interval=0.2)
            took = time.perf_counter() - start
            print(f"configMap edit -> the new value read from the mounted file: {took:.1f} s")
    finally:
        if node.proc is not None and node.proc.returncode is None:
            await node.terminate()
        if isinstance(plane, ClusterView):
            await plane.close()
        else:
            await plane.kill()
        if kube is not None:
            await asyncio.to_thread(kube.stop)
        await asyncio.to_thread(harness.stop)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--plane", choices=("real", "imitation"), default="real")
    parser.add_argument("--objects", action="store_true", help="each pod mounts a configMap and a secret")
    args = parser.parse_args()
    asyncio.run(run(args.pods, args.idle, args.plane == "real", args.objects))


if __name__ == "__main__":
    main()
