"""MQTT broker benchmark: vnode's broker (in a real ``vnode run --event-bus``) beside mosquitto.

    .venv/bin/python -m bench.mqtt [--seconds 5] [--clients 10] [--rate 1000] [--idle-clients 100]

- Throughput: ``--clients`` publishers each publishing as fast as the broker takes it to a topic of
  its own, and as many subscribers, one per topic, for ``--seconds``; messages/s delivered to the
  subscribers, QoS 0 and QoS 1 (publishers keep 10 QoS 1 messages in flight; subscribers PUBACK).
- Latency: the same clients at ``--rate`` messages/s in total, QoS 1; p50/p99 from publish to
  delivery (the load generator is one process, so one clock).
- Memory and idle CPU: vnode's RSS and CPU with MQTT off, and with it on and ``--idle-clients``
  connected clients.

Both brokers run with their default settings and get the same load from the same generator (raw
sockets and vnode's codec, so the generator is not paho's threads). Ratios are vnode / mosquitto.
The generator is one Python process: when it, not the broker, is the limit, the messages/s ratio
flatters the slower broker, so each run also prints the broker's CPU time per delivered message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from integration.mosquitto import Mosquitto
from integration.node import VnodeProcess, free_port
from vnode.mqtt import codec

PAYLOAD = 64
WINDOW = 10  # QoS 1 messages a publisher keeps in flight


@dataclass
class Counters:
    delivered: int = 0
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0  # the broker's CPU seconds over the measured window


async def connect(host: str, port: int, client_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(codec.encode(codec.Connect(client_id, keepalive=120)))
    ack = await codec.read_packet(reader, 1 << 20)
    assert isinstance(ack, codec.Connack) and ack.code == codec.ConnackCode.ACCEPTED, ack
    return reader, writer


async def subscriber(
    host: str, port: int, name: str, topic: str, qos: int, counters: Counters, ready: asyncio.Event
) -> None:
    reader, writer = await connect(host, port, name)
    try:
        writer.write(codec.encode(codec.Subscribe(1, [(topic, qos)])))
        while True:
            packet = await codec.read_packet(reader, 1 << 20)
            if isinstance(packet, codec.Suback):
                ready.set()
            elif isinstance(packet, codec.Publish):
                counters.delivered += 1
                sent = struct.unpack_from("!d", packet.payload)[0]
                if sent:
                    counters.latencies.append(time.perf_counter() - sent)
                if packet.qos and packet.packet_id is not None:
                    writer.write(codec.encode(codec.Ack(codec.Type.PUBACK, packet.packet_id)))
    finally:
        writer.close()


async def publisher(host: str, port: int, name: str, topic: str, qos: int, rate: float | None) -> None:
    """Publish until cancelled: as fast as accepted, or at ``rate`` messages/s with timestamps."""
    reader, writer = await connect(host, port, name)
    window = asyncio.Semaphore(WINDOW)

    async def acks() -> None:
        while True:
            packet = await codec.read_packet(reader, 1 << 20)
            if isinstance(packet, codec.Ack):
                window.release()

    ack_task = asyncio.create_task(acks())
    pid = 0
    try:
        start = time.perf_counter()
        n = 0
        while True:
            if qos:
                await window.acquire()
                pid = pid % 65535 + 1
            if rate is not None:
                due = start + n / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            stamp = time.perf_counter() if rate is not None else 0.0
            body = struct.pack("!d", stamp) + bytes(PAYLOAD - 8)
            writer.write(codec.encode_publish(topic, body, qos, False, False, pid if qos else None))
            n += 1
            if n % 50 == 0 or rate is not None:
                await writer.drain()
                await asyncio.sleep(0)  # drain does not yield while the socket takes it all
    finally:
        ack_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await ack_task
        writer.close()


async def run_load(
    host: str, port: int, clients: int, qos: int, seconds: float, rate: float | None, pid: int
) -> Counters:
    counters = Counters()
    tag = f"{qos}-{rate}-{time.monotonic_ns()}"
    readies = [asyncio.Event() for _ in range(clients)]
    tasks = [
        asyncio.create_task(
            subscriber(host, port, f"sub-{tag}-{i}", f"bench/{tag}/{i}", qos, counters, readies[i])
        )
        for i in range(clients)
    ]
    try:
        async with asyncio.timeout(10):
            for ready in readies:
                await ready.wait()
        per_client = rate / clients if rate is not None else None
        tasks += [
            asyncio.create_task(publisher(host, port, f"pub-{tag}-{i}", f"bench/{tag}/{i}", qos, per_client))
            for i in range(clients)
        ]
        await asyncio.sleep(1.0)  # warm-up, then measure
        counters.delivered = 0
        counters.latencies.clear()
        cpu = cpu_seconds(pid)
        await asyncio.sleep(seconds)
        return Counters(counters.delivered, list(counters.latencies), cpu_seconds(pid) - cpu)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def settle(pid: int, limit: float = 0.05, timeout: float = 120.0) -> None:
    """Wait until the broker is idle: after a QoS 0 run it still routes what the publishers had
    sent before they closed (the kernel's socket buffers), which must not count in the next run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        await asyncio.sleep(0.5)
        if cpu_seconds(pid) - before < limit * 0.5:
            return
    raise RuntimeError(f"broker pid {pid} still busy after {timeout}s")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000 if ordered else float("nan")


async def idle_clients(host: str, port: int, count: int) -> list[asyncio.StreamWriter]:
    writers = []
    for i in range(count):
        _, writer = await connect(host, port, f"idle-{i}")
        writers.append(writer)
    return writers


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    mosquitto = Mosquitto(base)
    mosquitto.start()
    port = free_port()
    node = VnodeProcess(
        base / "vnode",
        f"unix://{base}/absent.sock",
        extra_args=["--event-bus", f"--mqtt-server-internal=tcp://127.0.0.1:{port}", "-v=0"],
    )
    plain = VnodeProcess(base / "plain", f"unix://{base}/absent.sock", extra_args=["-v=0"])
    await node.start()
    await plain.start()
    try:
        assert node.proc is not None and plain.proc is not None and mosquitto.process is not None
        targets = {"vnode": ("127.0.0.1", port), "mosquitto": (mosquitto.host, mosquitto.port)}
        pids = {"vnode": node.proc.pid, "mosquitto": mosquitto.process.pid}
        results: dict[tuple[str, str], float] = {}
        for qos in (0, 1):
            for name, (host, p) in targets.items():
                await settle(pids[name])
                c = await run_load(host, p, args.clients, qos, args.seconds, None, pids[name])
                results[(name, f"qos{qos}")] = c.delivered / args.seconds
                per = c.cpu / max(c.delivered, 1) * 1e6
                print(
                    f"{name:9s} QoS {qos}: {c.delivered / args.seconds:10.0f} messages/s delivered,"
                    f" broker CPU {c.cpu / args.seconds:.0%} of a core, {per:.1f} us per message"
                )
            ratio = results[("vnode", f"qos{qos}")] / results[("mosquitto", f"qos{qos}")]
            print(f"ratio vnode/mosquitto QoS {qos}: {ratio:.2f}")
        for name, (host, p) in targets.items():
            await settle(pids[name])
            c = await run_load(host, p, args.clients, 1, args.seconds, args.rate, pids[name])
            print(
                f"{name:9s} QoS 1 at {args.rate:.0f}/s: {c.delivered / args.seconds:.0f} delivered/s,"
                f" latency p50 {pct(c.latencies, 0.5):.2f} ms, p99 {pct(c.latencies, 0.99):.2f} ms"
            )
        print(f"vnode RSS, MQTT off: {rss_mib(plain.proc.pid):.1f} MiB")
        print(f"vnode RSS, MQTT on after the load: {rss_mib(node.proc.pid):.1f} MiB")
        await settle(node.proc.pid)
        writers = await idle_clients("127.0.0.1", port, args.idle_clients)
        await asyncio.sleep(1.0)
        print(f"vnode RSS, MQTT on, {len(writers)} clients connected: {rss_mib(node.proc.pid):.1f} MiB")
        idle = {"MQTT off": plain.proc.pid, f"MQTT on, {len(writers)} idle clients": node.proc.pid}
        before = {k: cpu_seconds(pid) for k, pid in idle.items()}
        await asyncio.sleep(args.seconds)
        for k, pid in idle.items():
            print(f"vnode idle CPU, {k}: {(cpu_seconds(pid) - before[k]) / args.seconds:.2%} of a core")
        for w in writers:
            w.close()
    finally:
        await node.terminate()
        await plain.terminate()
        mosquitto.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--idle-clients", type=int, default=100)
    asyncio.run(main(parser.parse_args()))
