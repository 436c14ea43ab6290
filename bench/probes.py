"""What probes cost: vnode's CPU with N pods probed, against the same N pods without probes.

    .venv/bin/python -m bench.probes [--pods 200] [--period 10] [--idle 60]

Two fresh nodes in turn, each on a fresh fake CRI runtime (``integration/fakecri.py``: gRPC over
a unix socket, ExecSync answered by the fake), with N hostNetwork pods: the baseline's pods have
no probes, the probed ones have an exec liveness probe and an httpGet readiness probe each, at
``--period`` seconds, against one small HTTP server in this process. Once all are Running (and,
probed, Ready), the vnode process's CPU (utime + stime from /proc) is read over ``--idle``
seconds. Printed: both in percent of one core, the difference per probe run, and the probe runs
counted by ``/metrics/probes``. Nothing asserts on time; the issue's target is < 10 % of a core
for 200 pods at 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.scale import cpu_seconds
from integration.fakecri import FakeRuntime
from integration.node import VnodeProcess, busybox_pod, container_status

POLL = 0.5


def pod(i: int, port: int | None, period: int) -> dict[str, Any]:
    container: dict[str, Any] = {}
    if port is not None:
        container = {
            "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": period},
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": period},
        }
    return busybox_pod(f"p{i}", "sleep 86400", container=container)


async def settled(node: VnodeProcess, n: int, probed: bool) -> None:
    def done(pod: dict[str, Any]) -> bool:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        return bool(statuses) and bool(container_status(pod, "main").get("ready" if probed else "started"))

    while True:
        pods = await node.pods()
        if len(pods) == n and all(done(p) for p in pods.values()):
            return
        await asyncio.sleep(POLL)


async def measure(base: Path, n: int, period: int, idle: float, port: int | None) -> tuple[float, float]:
    """(percent of a core over ``idle``, probe runs counted meanwhile)."""
    runtime = FakeRuntime(base / "fakecri")
    runtime.start()
    node = VnodeProcess(
        base, runtime.endpoint, node_name="probes", extra_args=["-v=0", f"--max-pods={n + 10}"]
    )
    await node.start()
    try:
        for i in range(n):
            node.write_manifest(f"p{i}.yaml", pod(i, port, period))
        await settled(node, n, port is not None)
        assert node.proc is not None
        runs_before = await probe_runs(node)
        cpu, wall = cpu_seconds(node.proc.pid), time.monotonic()
        await asyncio.sleep(idle)  # the measurement window itself, not a synchronisation
        used = cpu_seconds(node.proc.pid) - cpu
        elapsed = time.monotonic() - wall
        return 100.0 * used / elapsed, await probe_runs(node) - runs_before
    finally:
        await node.terminate()
        runtime.stop()


async def probe_runs(node: VnodeProcess) -> float:
    code, body = await node.get("/metrics/probes")
    if code != 200:
        return 0.0
    return sum(float(m) for m in re.findall(rb"^prober_probe_total\{[^}]*\} (\S+)$", body, re.M))


async def run(n: int, period: int, idle: float) -> None:
    app = web.Application()

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-probes-") as tmp:
            base_cpu, _ = await measure(Path(tmp) / "baseline", n, period, idle, None)
            probed_cpu, runs = await measure(Path(tmp) / "probed", n, period, idle, port)
    finally:
        await runner.cleanup()
    expected = 2 * n * idle / period
    extra = probed_cpu - base_cpu
    print(f"pods: {n}, probes: exec liveness + httpGet readiness each, period {period}s, window {idle:.0f}s")
    print(f"vnode CPU without probes: {base_cpu:.2f}% of a core")
    print(f"vnode CPU with probes:    {probed_cpu:.2f}% of a core (target < 10%)")
    print(f"probe runs counted: {runs:.0f} (expected ~{expected:.0f})")
    if runs:
        print(f"CPU per probe run: {extra / 100 * idle / runs * 1e3:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--period", type=int, default=10)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    asyncio.run(run(args.pods, args.period, args.idle))


if __name__ == "__main__":
    main()
