"""Standalone-node benchmarks on a real containerd: pod start, memory, re-adoption.

    .venv/bin/python -m bench.standalone [--sizes 1,10,50] [--rounds 3]

Everything runs in one process tree on this machine, against a private containerd started by the
integration harness, so the figures are ratios against a baseline measured in the same run:

- pod start: N static pods (busybox, image present) from manifests written to all containers
  running as vnode's ``/pods`` reports them, beside a minimal script issuing the same CRI calls
  (RunPodSandbox, ImageStatus, CreateContainer, StartContainer; pods in parallel) directly.
- RSS of the vnode process idle (no pods) and with the largest N running.
- re-adoption: SIGKILL vnode with the largest N running, start it again; time until the kubelet
  API answers and until every pod is reported running with its container IDs unchanged.

Medians over ``--rounds`` are printed; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from integration.containerd import Containerd
from integration.node import VnodeProcess, busybox_pod, container_status, is_running, wait_for
from vnode.runtime import labels, specs
from vnode.runtime.cri import CriClient

IMAGE = "docker.io/library/busybox:1.35"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def direct_start(cri: CriClient, n: int, logs: Path) -> float:
    """The baseline: the CRI calls that start N one-container pods, issued directly."""
    dns = specs.DNSSettings()

    async def one(i: int) -> None:
        pod = busybox_pod(f"direct{i}", "sleep 3600")
        pod["metadata"].update(namespace="default", uid=str(uuid.uuid4()))
        log_dir = logs / pod["metadata"]["uid"]
        log_dir.mkdir(parents=True)
        sandbox = specs.sandbox_config(pod, log_dir=log_dir, attempt=0, dns=dns)
        sandbox.labels[labels.NODE_LABEL] = "bench-direct"
        sandbox_id = await cri.run_pod_sandbox(sandbox)
        ref = await cri.image_ref(IMAGE)
        assert ref is not None
        container = pod["spec"]["containers"][0]
        config = specs.container_config(
            pod,
            container,
            kind="container",
            restart_count=0,
            image_ref=ref,
            env={},
            mounts=[],
            termination_log_host_path=None,
        )
        config.labels[labels.NODE_LABEL] = "bench-direct"
        cid = await cri.create_container(sandbox_id, config, sandbox)
        await cri.start_container(cid)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - start


async def vnode_start(node: VnodeProcess, n: int, tag: str) -> float:
    """Manifests written -> every container running as ``/pods`` reports it."""
    start = time.perf_counter()
    for i in range(n):
        node.write_manifest(f"{tag}{i}.yaml", busybox_pod(f"{tag}{i}", "sleep 3600"))
    names = {node.static_name(f"{tag}{i}") for i in range(n)}
    while True:
        pods = await node.pods()
        if all(name in pods and is_running(pods[name], "main") for name in names):
            return time.perf_counter() - start
        await asyncio.sleep(0.05)


async def clear(node: VnodeProcess, harness: Containerd) -> None:
    for path in node.manifests.glob("*.yaml"):
        path.unlink()
    await wait_for(lambda: _none_left(node), what="the pods to be removed")
    await asyncio.to_thread(harness.remove_sandboxes)


async def _none_left(node: VnodeProcess) -> bool:
    return not await node.pods()


async def readopt(node: VnodeProcess, n: int) -> tuple[float, float]:
    """SIGKILL, restart; (seconds to the API answering, seconds to every pod re-adopted).

    Re-adopted means ``/healthz`` passes (its ``syncloop`` check waits until every pod restored
    from the store has been synced against containerd once) and ``/pods`` shows every pod running
    with the container IDs it had before the kill.
    """
    pods = await node.pods()
    before = {name: container_status(p, "main")["containerID"] for name, p in pods.items()}
    await node.kill()
    start = time.perf_counter()
    await node.start(wait=False)
    serving = None
    while True:
        try:
            if serving is None and (await node.get("/healthz/ping"))[0] == 200:
                serving = time.perf_counter() - start
            if serving is not None and (await node.get("/healthz"))[0] == 200:
                now = await node.pods()
                ids = {name: container_status(p, "main").get("containerID") for name, p in now.items()}
                if len(ids) == n and ids == before and all(is_running(p, "main") for p in now.values()):
                    return serving, time.perf_counter() - start
        except (OSError, AssertionError, KeyError, IndexError):
            pass
        await asyncio.sleep(0.01)


async def run(sizes: list[int], rounds: int) -> None:
    harness = Containerd()
    await asyncio.to_thread(harness.start)
    base = Path(tempfile.mkdtemp(prefix="vnode-bench-"))
    cri = CriClient(harness.endpoint, timeout=60)
    node = VnodeProcess(base, harness.endpoint, node_name="benchnode", extra_args=["-v=0"])
    results: dict[str, Any] = {}
    try:
        await node.start()
        await asyncio.sleep(2)  # let start-up settle before sampling idle memory
        assert node.proc is not None
        results["rss_idle"] = rss_mib(node.proc.pid)
        print(f"{'N':>4} {'direct CRI s':>13} {'vnode s':>9} {'ratio':>6}")
        for n in sizes:
            direct, via = [], []
            for r in range(rounds):
                direct.append(await direct_start(cri, n, base / f"direct-{n}-{r}"))
                await asyncio.to_thread(harness.remove_sandboxes)
                via.append(await vnode_start(node, n, f"p{n}r{r}x"))
                if not (n == sizes[-1] and r == rounds - 1):
                    await clear(node, harness)
            d, v = statistics.median(direct), statistics.median(via)
            print(f"{n:>4} {d:>13.3f} {v:>9.3f} {v / d:>6.2f}", flush=True)
        results["rss_loaded"] = rss_mib(node.proc.pid)
        print(
            f"RSS idle: {results['rss_idle']:.1f} MiB; with {sizes[-1]} pods: {results['rss_loaded']:.1f} MiB"
        )
        serving, adopted = [], []
        for _ in range(rounds):
            s, a = await readopt(node, sizes[-1])
            serving.append(s)
            adopted.append(a)
        print(
            f"re-adoption of {sizes[-1]} pods after SIGKILL: API serving after "
            f"{statistics.median(serving):.3f} s, all pods adopted (same container IDs, /healthz ok) "
            f"after {statistics.median(adopted):.3f} s"
        )
    finally:
        if node.proc is not None and node.proc.returncode is None:
            await node.terminate()
        await cri.close()
        await asyncio.to_thread(harness.stop)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,10,50")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run([int(s) for s in args.sizes.split(",")], args.rounds))


if __name__ == "__main__":
    main()
