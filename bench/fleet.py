"""A fleet of vnodes on one real control plane: what each idle node costs the API server.

    .venv/bin/python -m bench.fleet [--nodes 100] [--pods 10] [--idle 300] [--batch 10]

One kube-apiserver (with etcd, controller-manager and scheduler, ``integration/kube``) with its
audit log on; ``--nodes`` vnode processes, each with its own root dir, its own fake CRI runtime
(``integration/fakecri.py``) and its own credential (``system:node:<name>``), each reaching the
API server through a byte-counting TCP relay of this process (so the bytes are the node's, TLS
included, as its link would carry them). ``--pods`` pods per node are created in the API with
``nodeName`` set. Once all are Running and the start-up has settled, over ``--idle`` seconds:

- requests per minute per node, from the audit log (each request once; a watch when it starts),
  the mean, the busiest node and the mix by verb and resource;
- bytes per minute per node, sent and received at the node's link, and the mean in kbit/s;
- connections per node: open at the end of the window, and opened during it;
- API server CPU (percent of one core, utime + stime) and RSS, each over the same window with no
  node, and the difference divided by the number of nodes;

then the API server is restarted (SIGTERM, started again on the same etcd) and the time from its
``/readyz`` answering again until every node has renewed its Lease and every Node is Ready is
printed. Nothing asserts on figures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from integration.fakecri import FakeRuntime
from integration.kube import KubeCluster
from integration.kube.view import ClusterView
from integration.node import VnodeProcess, busybox_pod, free_port

TICK = os.sysconf("SC_CLK_TCK")


class CountingRelay:
    """A TCP relay to the API server that counts the bytes each way (TLS passes through)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.sent = 0  # node -> API server
        self.received = 0  # API server -> node
        self.connections = 0  # opened so far
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self.tasks.discard(task)
            return
        try:
            await asyncio.gather(self._pump(reader, up_writer, True), self._pump(up_reader, writer, False))
        finally:
            self.tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool) -> None:
        try:
            while data := await reader.read(65536):
                if up:
                    self.sent += len(data)
                else:
                    self.received += len(data)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def audit_counts(kube: KubeCluster) -> dict[str, collections.Counter[str]]:
    """Requests so far by user, then by ``verb resource[/subresource]``, from the audit logs."""
    seen: set[str] = set()
    by_user: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for log in sorted(kube.logs.glob("audit-*.log")):
        with log.open(errors="replace") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event["auditID"] in seen:
                    continue
                seen.add(event["auditID"])
                user = event.get("user", {}).get("username", "")
                if not user.startswith("system:node:"):
                    continue
                ref = event.get("objectRef") or {}
                resource = ref.get("resource", "?") + (
                    f"/{ref['subresource']}" if ref.get("subresource") else ""
                )
                by_user[user][f"{event['verb']} {resource}"] += 1
    return by_user


class Fleet:
    def __init__(self, base: Path, kube: KubeCluster, view: ClusterView) -> None:
        self.base = base
        self.kube = kube
        self.view = view
        self.nodes: list[VnodeProcess] = []
        self.runtimes: list[FakeRuntime] = []
        self.relays: list[CountingRelay] = []

    async def add(self, i: int) -> None:
        name = f"fleet{i}"
        runtime = FakeRuntime(self.base / name / "fakecri")
        self.runtimes.append(runtime)
        await asyncio.to_thread(runtime.start)
        host, port = self.kube.urls[0].removeprefix("https://").split(":")
        relay = CountingRelay(host, int(port))
        await relay.start()
        self.relays.append(relay)
        args = self.view.node_args(name, servers=[relay.url])
        node = VnodeProcess(self.base / name, runtime.endpoint, node_name=name, extra_args=[*args, "-v=0"])
        self.nodes.append(node)
        for attempt in range(3):
            try:
                await node.start()
                return
            except AssertionError:
                # free_port's port can be taken by another process before vnode binds it
                if attempt == 2 or "address already in use" not in node.log_tail():
                    raise
                node.port, node.local_api_port = free_port(), free_port()

    async def close(self) -> None:
        await asyncio.gather(
            *(n.terminate() for n in self.nodes if n.proc is not None and n.proc.returncode is None),
            return_exceptions=True,
        )
        for runtime in self.runtimes:
            await asyncio.to_thread(runtime.stop)
        for relay in self.relays:
            await relay.close()


async def all_pods_running(view: ClusterView, total: int) -> bool:
    body = await view.get_json("pods")
    phases = [p.get("status", {}).get("phase") for p in (body or {}).get("items", [])]
    return len(phases) == total and all(p == "Running" for p in phases)


async def poll(probe: Any, interval: float = 1.0) -> None:
    while not await probe():  # noqa: ASYNC110 - the state is in other processes
        await asyncio.sleep(interval)


async def fleet_ready_since(kube: KubeCluster, names: list[str], since: datetime) -> bool:
    """Every node renewed its Lease after ``since`` and every Node is Ready."""
    leases = json.loads(
        await kube.kubectl("get", "leases", "-n", "kube-node-lease", "-o", "json", check=False) or "{}"
    )
    renewed = {
        item["metadata"]["name"]
        for item in leases.get("items", [])
        if datetime.fromisoformat(
            item["spec"].get("renewTime", "1970-01-01T00:00:00Z").replace("Z", "+00:00")
        )
        > since
    }
    nodes = json.loads(await kube.kubectl("get", "nodes", "-o", "json", check=False) or "{}")
    ready = {
        item["metadata"]["name"]
        for item in nodes.get("items", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in item["status"].get("conditions", []))
    }
    return set(names) <= renewed and set(names) <= ready


async def run(n_nodes: int, pods: int, idle: float, batch: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="vnode-fleet-"))
    kube = KubeCluster(base / "kube", masters=1, audit=True)
    await asyncio.to_thread(kube.start)
    view = await ClusterView(kube, "fleet").open()
    fleet = Fleet(base, kube, view)
    try:
        popen = kube.apiserver(0).popen
        assert popen is not None
        api_pid = popen.pid
        print(
            f"control plane: kube-apiserver {kube.bin.parent.name}; {n_nodes} nodes x {pods} pods", flush=True
        )
        await asyncio.sleep(10)
        c0, t0 = proc_cpu(api_pid), time.perf_counter()
        await asyncio.sleep(min(idle, 60))
        base_cpu = 100 * (proc_cpu(api_pid) - c0) / (time.perf_counter() - t0)
        base_rss = proc_rss_mib(api_pid)
        print(f"API server with no node: CPU {base_cpu:.2f} %, RSS {base_rss:.0f} MiB", flush=True)

        start = time.perf_counter()
        for first in range(0, n_nodes, batch):
            await asyncio.gather(*(fleet.add(i) for i in range(first, min(first + batch, n_nodes))))
            print(f"  {len(fleet.nodes)} nodes up", flush=True)
        print(f"{n_nodes} nodes serving after {time.perf_counter() - start:.1f} s", flush=True)
        items = []
        for node in fleet.nodes:
            for j in range(pods):
                pod = busybox_pod(f"{node.node_name}-p{j}", "sleep 86400")
                pod["spec"]["nodeName"] = node.node_name
                items.append(pod)
        start = time.perf_counter()
        for k in range(0, len(items), 200):
            listed = json.dumps({"apiVersion": "v1", "kind": "List", "items": items[k : k + 200]}).encode()
            await view.kubectl("create", "-f", "-", stdin=listed, timeout=600)
        await poll(lambda: all_pods_running(view, len(items)), interval=2.0)
        print(f"{len(items)} pods Running in the API after {time.perf_counter() - start:.1f} s", flush=True)

        await asyncio.sleep(30)  # let the start-up writes settle
        before = await asyncio.to_thread(audit_counts, kube)
        bytes_before = [(r.sent, r.received) for r in fleet.relays]
        connections_before = sum(r.connections for r in fleet.relays)
        c0, t0 = proc_cpu(api_pid), time.perf_counter()
        await asyncio.sleep(idle)
        elapsed = time.perf_counter() - t0
        api_cpu = 100 * (proc_cpu(api_pid) - c0) / elapsed
        api_rss = proc_rss_mib(api_pid)
        after = await asyncio.to_thread(audit_counts, kube)
        bytes_after = [(r.sent, r.received) for r in fleet.relays]
        opened = sum(r.connections for r in fleet.relays) - connections_before
        open_now = sum(len(r.tasks) for r in fleet.relays) / n_nodes

        per_node = []
        mix: collections.Counter[str] = collections.Counter()
        for node in fleet.nodes:
            user = f"system:node:{node.node_name}"
            delta = after.get(user, collections.Counter()) - before.get(user, collections.Counter())
            mix.update(delta)
            per_node.append(sum(delta.values()) * 60 / elapsed)
        sent = [(a[0] - b[0]) * 60 / elapsed for a, b in zip(bytes_after, bytes_before, strict=True)]
        received = [(a[1] - b[1]) * 60 / elapsed for a, b in zip(bytes_after, bytes_before, strict=True)]
        mean_req = sum(per_node) / n_nodes
        mean_sent, mean_received = sum(sent) / n_nodes, sum(received) / n_nodes
        kbits = (mean_sent + mean_received) * 8 / 60 / 1000
        print(f"\nidle over {elapsed:.0f} s, per node (mean of {n_nodes}):")
        print(f"  requests/min: {mean_req:.2f} (busiest node {max(per_node):.2f})")
        for key, count in mix.most_common():
            print(f"    {count * 60 / elapsed / n_nodes:6.2f}/min  {key}")
        print(f"  bytes/min sent {mean_sent:.0f}, received {mean_received:.0f}; {kbits:.3f} kbit/s")
        print(f"  connections: {open_now:.1f} open, {opened * 60 / elapsed / n_nodes:.2f}/min opened")
        print(
            f"  API server: CPU {api_cpu:.2f} % of a core ({(api_cpu - base_cpu) / n_nodes:.3f} % per node), "
            f"RSS {api_rss:.0f} MiB ({(api_rss - base_rss) / n_nodes:.2f} MiB per node)"
        )

        names = [n.node_name for n in fleet.nodes]
        await asyncio.to_thread(kube.restart_master, 0)
        back = datetime.now(tz=UTC)
        start = time.perf_counter()
        await poll(lambda: fleet_ready_since(kube, names, back), interval=1.0)
        took = time.perf_counter() - start
        print(f"API server restarted: all {n_nodes} nodes renewed, Ready {took:.1f} s after it answered")
    finally:
        await fleet.close()
        await view.close()
        await asyncio.to_thread(kube.stop)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--pods", type=int, default=10, help="pods per node")
    parser.add_argument("--idle", type=float, default=300.0, help="idle window in seconds")
    parser.add_argument("--batch", type=int, default=10, help="nodes started at once")
    args = parser.parse_args()
    asyncio.run(run(args.nodes, args.pods, args.idle, args.batch))


if __name__ == "__main__":
    main()
