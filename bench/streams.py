"""Streaming benchmarks: what the proxy in vnode adds to exec and port-forward.

    .venv/bin/python -m bench.streams [--rounds 200] [--megabytes 64]

Each figure is measured twice in the same run with the same SPDY/3.1 client (``vnode.streaming.spdy``):
through vnode (the local API, which reaches the same handlers as the kubelet API) and directly
against the URL containerd's streaming server hands out for the same CRI call (the baseline).

- Exec round trip: one ``cat`` session; a line written to its stdin until it comes back on stdout,
  ``--rounds`` times (p50/p90 and the difference = what vnode adds; target <= 2 ms at p50).
- Whole exec: ``echo`` from the request to the 101 and to its exit status, p50. Through vnode this
  includes a TLS handshake with the local API and vnode's CRI Exec call; the baseline's CRI Exec is
  made by the benchmark itself, and its upgrade is plain HTTP.
- Port-forward throughput: ``--megabytes`` MiB fetched over one forwarded connection from a
  busybox httpd in the pod (target >= 80 % of direct).

Run as root (the harness starts its own containerd). Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import yaml

from integration.containerd import Containerd
from integration.node import VnodeProcess, busybox_pod, free_port, is_running, running_node
from vnode.runtime.cri import CriClient
from vnode.streaming import spdy
from vnode.streaming.upgrade import parse_head, unverified_tls

Connect = Callable[[str, str], Awaitable[spdy.SpdyConnection]]


async def upgrade(url: str, method: str, protocol: str, token: str | None = None) -> spdy.SpdyConnection:
    """A SPDY/3.1 upgrade to ``url`` (http or https without verification)."""
    parts = urlsplit(url)
    context = unverified_tls() if parts.scheme == "https" else None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, ssl=context, limit=1 << 20)
    lines = [f"{method} {parts.path}?{parts.query} HTTP/1.1", f"Host: {parts.netloc}", "Connection: Upgrade",
             "Upgrade: SPDY/3.1", f"X-Stream-Protocol-Version: {protocol}"]  # fmt: skip
    if token:
        lines.append(f"Authorization: Bearer {token}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = parse_head(await reader.readuntil(b"\r\n\r\n"))
    if head.status != 101:
        raise RuntimeError(f"upgrade to {url} refused: {head.status} {head.raw!r}")
    return spdy.SpdyConnection(reader, writer)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def echo_round_trips(conn: spdy.SpdyConnection, rounds: int) -> list[float]:
    await conn.open_stream({"streamType": "error"})
    stdin = await conn.open_stream({"streamType": "stdin"})
    stdout = await conn.open_stream({"streamType": "stdout"})
    frames = conn.frames()
    times = []
    for i in range(rounds):
        line = f"line {i}\n".encode()
        start = time.perf_counter()
        await conn.send(stdin, line)
        got = b""
        while got != line:
            frame = await anext(frames)
            if frame.kind == "data" and frame.stream_id == stdout:
                got += frame.data
        times.append(time.perf_counter() - start)
    conn.close()
    return times


async def whole_exec(conn: spdy.SpdyConnection) -> float:
    start = time.perf_counter()
    error = await conn.open_stream({"streamType": "error"})
    await conn.open_stream({"streamType": "stdout"})
    async for frame in conn.frames():
        if frame.kind == "data" and frame.stream_id == error and frame.fin:
            break
        if frame.kind == spdy.GOAWAY:
            break
    conn.close()
    return time.perf_counter() - start


async def fetch(conn: spdy.SpdyConnection, port: int, path: str) -> int:
    """One HTTP/1.0 GET over a forwarded connection; the bytes received."""
    await conn.open_stream({"streamType": "error", "port": str(port), "requestID": "0"})
    data = await conn.open_stream({"streamType": "data", "port": str(port), "requestID": "0"})
    await conn.send(data, f"GET {path} HTTP/1.0\r\n\r\n".encode())
    total = 0
    async for frame in conn.frames():
        if frame.kind == "data" and frame.stream_id == data:
            total += len(frame.data)
            if frame.fin:
                break
        if frame.kind in (spdy.GOAWAY, spdy.RST_STREAM) and frame.stream_id in (0, data):
            break
    conn.close()
    return total


async def run(rounds: int, megabytes: int) -> None:
    harness = Containerd()
    await asyncio.to_thread(harness.start)
    cri = CriClient(harness.endpoint)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with running_node(Path(tmp), harness.endpoint) as node:
                await measure(node, cri, rounds, megabytes)
    finally:
        await cri.close()
        await asyncio.to_thread(harness.remove_sandboxes)
        await asyncio.to_thread(harness.stop)


async def measure(node: VnodeProcess, cri: CriClient, rounds: int, megabytes: int) -> None:
    port = free_port()
    command = f"mkdir -p /www && dd if=/dev/zero of=/www/big bs=1M count={megabytes} 2>/dev/null && " \
              f"httpd -f -p {port} -h /www"  # fmt: skip
    node.write_manifest("bench.yaml", busybox_pod("bench", command))
    pod = await node.wait_pod("bench", lambda p: is_running(p, "main"), what="bench pod running", timeout=120)
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://")[-1]
    sandbox_id = ""
    for sandbox in await cri.list_pod_sandboxes({}):
        if sandbox.metadata.name == pod["metadata"]["name"]:
            sandbox_id = sandbox.id
    config = yaml.safe_load((node.root_dir / "local.kubeconfig").read_text())
    server, token = config["clusters"][0]["cluster"]["server"], config["users"][0]["user"]["token"]
    base = f"{server}/api/v1/namespaces/default/pods/{pod['metadata']['name']}"

    def via_vnode(sub: str, **query: object) -> Callable[[], Awaitable[spdy.SpdyConnection]]:
        url = f"{base}/{sub}?{urlencode(query, doseq=True)}"
        protocol = "portforward.k8s.io" if sub == "portforward" else "v4.channel.k8s.io"
        return lambda: upgrade(url, "POST", protocol, token)

    async def direct_exec(cmd: list[str], stdin: bool) -> spdy.SpdyConnection:
        url = await cri.exec_url(container_id, cmd, tty=False, stdin=stdin, stdout=True, stderr=False)
        return await upgrade(url, "POST", "v4.channel.k8s.io")

    async def direct_forward() -> spdy.SpdyConnection:
        return await upgrade(await cri.port_forward_url(sandbox_id, [port]), "POST", "portforward.k8s.io")

    results: dict[str, object] = {}
    # interleave the two paths so that drift in the machine hits both alike
    rt_vnode: list[float] = []
    rt_direct: list[float] = []
    for _ in range(3):
        session = await via_vnode("exec", command="cat", stdin="true", stdout="true")()
        rt_vnode += await echo_round_trips(session, rounds // 3)
        rt_direct += await echo_round_trips(await direct_exec(["cat"], True), rounds // 3)
    p50v, p50d = percentile(rt_vnode, 0.5) * 1e3, percentile(rt_direct, 0.5) * 1e3
    results["exec_round_trip_ms"] = {
        "vnode_p50": round(p50v, 3), "direct_p50": round(p50d, 3), "added_p50": round(p50v - p50d, 3),
        "vnode_p90": round(percentile(rt_vnode, 0.9) * 1e3, 3),
        "direct_p90": round(percentile(rt_direct, 0.9) * 1e3, 3),
    }  # fmt: skip

    # (time to the 101, time to the exit status) of an `echo` exec, interleaved
    whole: dict[str, list[tuple[float, float]]] = {"vnode": [], "direct": []}
    starts: dict[str, Callable[[], Awaitable[spdy.SpdyConnection]]] = {
        "vnode": via_vnode("exec", command=["echo", "hi"], stdout="true"),
        "direct": lambda: direct_exec(["echo", "hi"], False),
    }
    for _ in range(30):
        for label, start_session in starts.items():
            start = time.perf_counter()
            conn = await start_session()
            upgraded = time.perf_counter() - start
            whole[label].append((upgraded, upgraded + await whole_exec(conn)))
    results["whole_exec_ms"] = {
        f"{label}_{part}_p50": round(statistics.median(t[i] for t in times) * 1e3, 2)
        for label, times in whole.items()
        for i, part in enumerate(("upgraded", "status"))
    }

    mib: dict[str, list[float]] = {"vnode": [], "direct": []}
    connects = {"vnode": via_vnode("portforward", ports=port), "direct": direct_forward}
    for _ in range(3):
        for label, connect in connects.items():
            conn = await connect()
            start = time.perf_counter()
            size = await fetch(conn, port, "/big")
            mib[label].append(size / (1 << 20) / (time.perf_counter() - start))
            if size < megabytes << 20:
                raise RuntimeError(f"{label}: port-forward fetched {size} bytes")
    best_v, best_d = statistics.median(mib["vnode"]), statistics.median(mib["direct"])
    results["port_forward_MiB_per_s"] = {
        "vnode": round(best_v, 1), "direct": round(best_d, 1), "ratio": round(best_v / best_d, 3),
    }  # fmt: skip
    print(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--megabytes", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.megabytes))


if __name__ == "__main__":
    main()
