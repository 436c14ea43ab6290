"""Container-log benchmarks: ``/containerLogs`` throughput and ``follow`` latency.

    .venv/bin/python -m bench.logs [--size-mib 200] [--rounds 3] [--lines 300]

vnode's kubelet API (``KubeletApp``, over TLS as the node serves it) runs in this process with a
``LogLocator`` that points at a generated CRI-format log; curl is the client, writing to
/dev/null, so the figure is the server's. The baseline, measured in the same run on the same
file, is a minimal Python script that strips the CRI prefixes (``<time> <stream> <tag> ``) and
joins P fragments, writing to /dev/null. Both outputs are checked to be the same bytes once.

- throughput: MB/s of log file served; target: vnode ≥ 50 % of the script's.
- follow latency: a line appended to the file (with its monotonic write time) until an HTTP client
  on ``?follow=true`` has it; lines are spaced out so that none waits for another. Target p50 ≤ 50 ms.

Medians over ``--rounds`` are printed; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from vnode.api.server import KubeletApp, KubeletHandlers
from vnode.provider.protocols import LogTarget
from vnode.security.tls import ensure_self_signed, server_ssl_context

# The baseline: as little as a correct CRI-log stripper can be (the content after the third
# space; a P fragment's newline dropped so the fragments join).
STRIP = r"""
import sys
out = sys.stdout.buffer
with open(sys.argv[1], "rb") as f:
    rest = b""
    while block := f.read(1 << 20):
        data = rest + block
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        pieces = []
        for line in data[:cut].splitlines(keepends=True):
            _, _, tag, content = line.split(b" ", 3)
            pieces.append(content[:-1] if tag[:1] == b"P" else content)
        out.write(b"".join(pieces))
"""


def generate(path: Path, size: int) -> None:
    """A CRI log of about ``size`` bytes: lines of 20-200 bytes on both streams and now and then
    a line of 40 KiB, split into 16 KiB P fragments as containerd does; times increasing, in
    containerd's local-time-with-offset form."""
    rng = random.Random(42)
    words = [
        bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))
        for _ in range(500)
    ]
    base = 1_767_225_600  # 2026-01-01
    written, i = 0, 0
    with open(path, "wb") as f:
        while written < size:
            lines = []
            for _ in range(2000):
                i += 1
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base + i // 1000))
                prefix = f"{stamp}.{i % 1000:03d}{rng.randint(0, 999999):06d}+00:00 ".encode()
                stream = b"stderr" if i % 7 == 0 else b"stdout"
                text = b" ".join(rng.choices(words, k=rng.randint(3, 30)))
                if i % 3001 == 0:  # a long line, split by the runtime
                    long = (text * 2000)[: 40 << 10]
                    for start in range(0, len(long) - (16 << 10), 16 << 10):
                        lines.append(prefix + stream + b" P " + long[start : start + (16 << 10)] + b"\n")
                    text = long[len(long) // (16 << 10) * (16 << 10) :]
                lines.append(prefix + stream + b" F " + text + b"\n")
            chunk = b"".join(lines)
            f.write(chunk)
            written += len(chunk)


class FileLocator:
    """A ``LogLocator`` that serves one file for every container."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def locate_log(self, namespace: str, pod: str, container: str, previous: bool) -> LogTarget:
        async def running() -> bool:
            return True

        return LogTarget(str(self.path), running)


async def serve(path: Path, pki: Path) -> tuple[web.AppRunner, int]:
    cert, key = pki / "kubelet.crt", pki / "kubelet.key"
    ensure_self_signed(cert, key, hostnames=["localhost"], ips=["127.0.0.1"])
    app = KubeletApp(KubeletHandlers(pods=None, logs=FileLocator(path))).app
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl_context(cert, key)).start()
    return runner, int(runner.addresses[0][1])


async def timed(*argv: str) -> float:
    """Seconds for a command writing to /dev/null (it runs beside this process's event loop)."""
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL)
    if await proc.wait() != 0:
        raise SystemExit(f"{argv[0]} failed")
    return time.perf_counter() - start


async def digest(command: str) -> str:
    proc = await asyncio.create_subprocess_shell(f"{command} | sha256sum", stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    return out.decode().split()[0]


async def follow_latencies(port: int, path: Path, count: int) -> list[float]:
    """Milliseconds from a line's append to its arrival at a follow client."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    url = f"https://127.0.0.1:{port}/containerLogs/default/p/c?follow=true"
    latencies: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            # vnode sends its headers with the first line: there is one before the client asks.
            os.write(fd, b"2026-01-01T00:00:00.000000000+00:00 stdout F warm-up\n")
            async with session.get(url) as resp:
                assert resp.status == 200, resp.status
                await resp.content.readline()
                for _ in range(count):
                    # Spaced out (20-60 ms) so that no line waits behind the previous one.
                    await asyncio.sleep(random.uniform(0.02, 0.06))
                    os.write(fd, b"2026-01-01T00:00:00.000000000+00:00 stdout F %d\n" % time.monotonic_ns())
                    line = await asyncio.wait_for(resp.content.readline(), 10)
                    latencies.append((time.monotonic_ns() - int(line)) / 1e6)
    finally:
        os.close(fd)
    return latencies


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def main(size_mib: int, rounds: int, lines: int) -> None:
    with tempfile.TemporaryDirectory(prefix="vnode-bench-logs-") as tmp:
        base = Path(tmp)
        log = base / "0.log"
        generate(log, size_mib << 20)
        size = log.stat().st_size
        script = base / "strip.py"
        script.write_text(STRIP)
        runner, port = await serve(log, base)
        try:
            url = f"https://127.0.0.1:{port}/containerLogs/default/p/c"
            curl = ("curl", "-sSk", "--fail", "-o", "/dev/null", url)
            strip = (sys.executable, str(script), str(log))
            same = await digest(f"curl -sSk --fail {url}") == await digest(" ".join(strip))
            print(f"log: {size / 1e6:.0f} MB CRI format; vnode's output equals the script's: {same}")
            vnode_s, script_s = [], []
            for _ in range(rounds):
                script_s.append(await timed(*strip))
                vnode_s.append(await timed(*curl))
            v, s = statistics.median(vnode_s), statistics.median(script_s)
            print(f"throughput  script (strip to /dev/null): {size / s / 1e6:7.1f} MB/s  ({s:.2f} s)")
            print(f"            vnode /containerLogs (TLS):  {size / v / 1e6:7.1f} MB/s  ({v:.2f} s)")
            print(f"            vnode / script: {s / v:.0%} (target >= 50%)")

            follow = base / "follow.log"
            follow.write_bytes(b"")
            await runner.cleanup()
            runner, port = await serve(follow, base)
            latencies = await follow_latencies(port, follow, lines)
            print(
                f"follow latency over {len(latencies)} lines: p50 {pct(latencies, 50):.1f} ms, "
                f"p90 {pct(latencies, 90):.1f} ms, p99 {pct(latencies, 99):.1f} ms, "
                f"max {max(latencies):.1f} ms (target p50 <= 50 ms)"
            )
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.logs", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lines", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.size_mib, args.rounds, args.lines))
