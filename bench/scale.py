"""One node, many pods, on the fake CRI runtime: how vnode's costs grow with the pod count.

    .venv/bin/python -m bench.scale [--sizes 100,300,1000] [--idle 300] [--source static|api]

For each size N, a fresh node (its own root dir, ``--max-pods`` raised above N) on a fresh fake
runtime (``integration/fakecri.py``, a separate process speaking CRI v1 over gRPC, so vnode's gRPC
path runs as in production while a container costs almost nothing):

- start: N one-container pods -- static manifests written (``--source static``), or created with
  ``kubectl create`` in the real control plane (``--source api``, the node joined to it) -- to all
  of them Running as the node's ``/pods`` reports them (and, for API pods, as the API shows them);
- idle CPU of the vnode process over ``--idle`` seconds once everything is Running, in percent of
  one core (utime + stime from /proc), and the fake runtime's beside it;
- RSS of the vnode process and the size of its store (LMDB pages in use);
- re-adoption: SIGKILL, start again on the same root dir, until ``/healthz`` passes and ``/pods``
  shows all N Running with the container IDs they had before the kill;
- deletion: every manifest removed (or every pod deleted in the API) to none left in ``/pods`` and
  no sandbox left in the runtime.

Then per-pod growth from the smallest to the largest size: (cost at N_max / N_max) over (cost at
N_min / N_min); 1.0 is linear, below 1 better than linear. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from integration.fakecri import FakeRuntime
from integration.kube import KubeCluster
from integration.kube.view import ClusterView
from integration.node import VnodeProcess, busybox_pod, container_status, is_running

POLL = 0.25


class Profiler:
    """``py-spy record`` on the vnode and runtime processes during a phase, as collapsed stacks
    (``--profile DIR``): ``DIR/<phase>-<N>-<process>.txt``, one ``stack count`` line each."""

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, phase: str, n: int, pids: dict[str, int]) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        for name, pid in pids.items():
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "-o",
                    str(self.out / f"{phase}-{n}-{name}.txt"),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
            )

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
            await proc.wait()
        self.procs = []


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def store_mib(root: Path) -> float:
    data = root / "store" / "data.mdb"
    # LMDB's file is sparse up to its map size: count the blocks actually allocated.
    return data.stat().st_blocks * 512 / 2**20 if data.exists() else 0.0


@dataclass
class Figures:
    n: int
    start: float = 0.0
    start_api: float | None = None
    idle_cpu: float = 0.0
    runtime_cpu: float = 0.0
    rss: float = 0.0
    store: float = 0.0
    readopt_serving: float = 0.0
    readopt: float = 0.0
    delete: float = 0.0
    notes: list[str] = field(default_factory=list)


class StaticPods:
    """Pods from manifest files, one file each, written the way a configuration tool would."""

    api = False

    def __init__(self, node: VnodeProcess) -> None:
        self.node = node

    def args(self) -> list[str]:
        return []

    def names(self, n: int) -> set[str]:
        return {self.node.static_name(f"p{i}") for i in range(n)}

    async def create(self, n: int) -> None:
        for i in range(n):
            self.node.write_manifest(f"p{i}.yaml", busybox_pod(f"p{i}", "sleep 86400"))

    async def running_in_api(self, n: int) -> bool:
        return True

    async def delete_all(self) -> None:
        for path in self.node.manifests.glob("*.yaml"):
            path.unlink()

    async def none_in_api(self) -> bool:
        return True


class ApiPods:
    """Pods created in the real API server with ``nodeName`` set (no scheduler in the way), in a
    namespace of their own, with what admission gives every pod (a projected service-account
    token, the kube-root-ca.crt configMap)."""

    api = True

    def __init__(self, view: ClusterView, node_name: str) -> None:
        self.view = view
        self.node_name = node_name

    def args(self) -> list[str]:
        return self.view.node_args(self.node_name)

    def names(self, n: int) -> set[str]:
        return {f"p{i}" for i in range(n)}

    async def create(self, n: int) -> None:
        pods = []
        for i in range(n):
            pod = busybox_pod(f"p{i}", "sleep 86400")
            pod["spec"]["nodeName"] = self.node_name
            pods.append(pod)
        listed = json.dumps({"apiVersion": "v1", "kind": "List", "items": pods}).encode()
        await self.view.kubectl("create", "-f", "-", stdin=listed, timeout=600)

    async def _phases(self) -> list[str]:
        body = await self.view.get_json("pods")
        return [p.get("status", {}).get("phase", "") for p in (body or {}).get("items", [])]

    async def running_in_api(self, n: int) -> bool:
        phases = await self._phases()
        return len(phases) == n and all(p == "Running" for p in phases)

    async def delete_all(self) -> None:
        await self.view.kubectl("delete", "pods", "--all", "--wait=false", timeout=600)

    async def none_in_api(self) -> bool:
        return not await self._phases()


Source = StaticPods | ApiPods


async def all_running(node: VnodeProcess, names: set[str]) -> dict[str, dict[str, Any]] | None:
    try:
        pods = await node.pods()
    except (OSError, AssertionError):
        return None
    if all(name in pods and is_running(pods[name], "main") for name in names):
        return pods
    return None


async def until(probe: Any, interval: float = POLL) -> Any:
    """Poll an observable condition in another process until it holds (no deadline: a benchmark)."""
    while True:
        result = await probe()
        if result:
            return result
        await asyncio.sleep(interval)


async def readopt(
    node: VnodeProcess, before: dict[str, str], profiler: Profiler, runtime: int
) -> tuple[float, float]:
    """SIGKILL, restart; (seconds to the API answering, seconds to every pod re-adopted)."""
    await node.kill()
    start = time.perf_counter()
    await node.start(wait=False)
    assert node.proc is not None
    await profiler.start("readopt", len(before), {"vnode": node.proc.pid, "runtime": runtime})
    serving: float | None = None
    while True:
        if node.proc.returncode is not None:
            raise RuntimeError(f"vnode exited with {node.proc.returncode}:\n{node.log_tail()}")
        try:
            if serving is None and (await node.get("/healthz/ping"))[0] == 200:
                serving = time.perf_counter() - start
            if serving is not None and (await node.get("/healthz"))[0] == 200:
                now = await node.pods()
                ids = {n: container_status(p, "main").get("containerID") for n, p in now.items()}
                if ids == before and all(is_running(p, "main") for p in now.values()):
                    await profiler.stop()
                    return serving, time.perf_counter() - start
        except (OSError, AssertionError, KeyError, IndexError):
            pass
        await asyncio.sleep(0.05)


async def measure(n: int, idle: float, base: Path, profiler: Profiler, kube: KubeCluster | None) -> Figures:
    figures = Figures(n)
    runtime = FakeRuntime(base / "fakecri")
    await asyncio.to_thread(runtime.start)
    node_name = f"scale{n}-{os.getpid()}"
    view = await ClusterView(kube, f"scale{n}").open() if kube is not None else None
    node = VnodeProcess(base / "node", runtime.endpoint, node_name=node_name)
    source: Source = ApiPods(view, node_name) if view is not None else StaticPods(node)
    node.extra_args = [*source.args(), "-v=0", f"--max-pods={n + 10}"]
    try:
        await node.start()
        assert node.proc is not None and runtime.proc is not None
        names = source.names(n)
        pids = {"vnode": node.proc.pid, "runtime": runtime.proc.pid}
        await profiler.start("start", n, pids)
        start = time.perf_counter()
        await source.create(n)
        if not source.api:
            start = time.perf_counter()  # from all manifests written
        pods = await until(lambda: all_running(node, names))
        figures.start = time.perf_counter() - start
        await profiler.stop()
        print(f"  {n}: all Running in /pods after {figures.start:.2f} s", flush=True)
        if source.api:
            await until(lambda: source.running_in_api(n), interval=1.0)
            figures.start_api = time.perf_counter() - start
            print(f"  {n}: all Running in the API after {figures.start_api:.2f} s", flush=True)

        await asyncio.sleep(5)  # let the start-up writes and status updates settle
        v0, r0, t0 = cpu_seconds(node.proc.pid), cpu_seconds(runtime.proc.pid), time.perf_counter()
        await profiler.start("idle", n, pids)
        await asyncio.sleep(idle)
        await profiler.stop()
        v1, r1, t1 = cpu_seconds(node.proc.pid), cpu_seconds(runtime.proc.pid), time.perf_counter()
        figures.idle_cpu = 100 * (v1 - v0) / (t1 - t0)
        figures.runtime_cpu = 100 * (r1 - r0) / (t1 - t0)
        figures.rss = rss_mib(node.proc.pid)
        figures.store = store_mib(node.root_dir)
        print(
            f"  {n}: idle CPU {figures.idle_cpu:.2f} % (runtime {figures.runtime_cpu:.2f} %), "
            f"RSS {figures.rss:.1f} MiB, store {figures.store:.2f} MiB",
            flush=True,
        )

        pods = await node.pods()
        before = {name: container_status(p, "main")["containerID"] for name, p in pods.items()}
        figures.readopt_serving, figures.readopt = await readopt(node, before, profiler, runtime.proc.pid)
        print(f"  {n}: re-adopted after {figures.readopt:.2f} s", flush=True)
        sandboxes, containers = await asyncio.to_thread(runtime.counts)
        if (sandboxes, containers) != (n, n):
            figures.notes.append(
                f"after re-adoption the runtime holds {sandboxes} sandboxes, {containers} containers"
            )

        await profiler.start("delete", n, {"vnode": node.proc.pid, "runtime": runtime.proc.pid})
        start = time.perf_counter()
        await source.delete_all()

        async def gone() -> bool:
            return (
                not await node.pods()
                and (await asyncio.to_thread(runtime.counts))[0] == 0
                and await source.none_in_api()
            )

        await until(gone)
        figures.delete = time.perf_counter() - start
        await profiler.stop()
        print(f"  {n}: all deleted after {figures.delete:.2f} s", flush=True)
    finally:
        await profiler.stop()
        if node.proc is not None and node.proc.returncode is None:
            await node.terminate()
        await asyncio.to_thread(runtime.stop)
        if view is not None:
            await view.close()
    return figures


def report(results: list[Figures], idle: float) -> None:
    rows = [
        ("start: created -> all Running in /pods (s)", "start"),
        (f"idle CPU over {idle:.0f} s (% of one core)", "idle_cpu"),
        ("  fake runtime's idle CPU (%)", "runtime_cpu"),
        ("RSS (MiB)", "rss"),
        ("store in use (MiB)", "store"),
        ("re-adoption after SIGKILL: API serving (s)", "readopt_serving"),
        ("re-adoption after SIGKILL: all adopted (s)", "readopt"),
        ("delete all -> none left (s)", "delete"),
    ]
    if any(r.start_api is not None for r in results):
        rows.insert(1, ("start: all Running in the API (s)", "start_api"))
    first, last = results[0], results[-1]
    head = "".join(f"{r.n:>10}" for r in results)
    print(f"\n{'pods':<46}{head}{'per-pod growth ' + str(first.n) + '->' + str(last.n):>26}")
    for label, attr in rows:
        values = [getattr(r, attr) for r in results]
        cells = "".join(f"{v:>10.2f}" if v is not None else f"{'-':>10}" for v in values)
        a, b = getattr(first, attr), getattr(last, attr)
        growth = ""
        if a and b and len(results) > 1:
            growth = f"{(b / last.n) / (a / first.n):.2f}"
        print(f"{label:<46}{cells}{growth:>26}")
    for r in results:
        for note in r.notes:
            print(f"note ({r.n} pods): {note}")


async def run(sizes: list[int], idle: float, profile: Path | None, api: bool) -> None:
    profiler = Profiler(profile)
    results = []
    kube: KubeCluster | None = None
    top = Path(tempfile.mkdtemp(prefix="vnode-scale-"))
    try:
        if api:
            kube = KubeCluster(top / "kube", masters=1)
            await asyncio.to_thread(kube.start)
            print(f"control plane: kube-apiserver {kube.bin.parent.name}; pods created in the API")
        else:
            print("static pods from manifest files")
        for n in sizes:
            results.append(await measure(n, idle, top / f"n{n}", profiler, kube))
    finally:
        if kube is not None:
            await asyncio.to_thread(kube.stop)
        shutil.rmtree(top, ignore_errors=True)
    report(results, idle)
    print(json.dumps([r.__dict__ for r in results]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--idle", type=float, default=300.0, help="idle CPU window in seconds")
    parser.add_argument(
        "--profile", type=Path, help="record py-spy profiles of each phase into this directory"
    )
    parser.add_argument("--source", choices=("static", "api"), default="static")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    asyncio.run(run(sizes, args.idle, args.profile, args.source == "api"))


if __name__ == "__main__":
    main()
