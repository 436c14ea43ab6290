"""Stats without a runtime: the collector over the CRI stand-in, the summary's keys, the
``/metrics/resource`` exposition (golden, and decoded with metrics-server's rules), thresholds,
pressure with a fake stats source (memory, disk, pid), allocatable, pod cgroups and /metrics."""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from integration.fakestats import FakeContainer, FakePod, FakeStatsRuntime
from tests.metrics_server_rules import decode
from vnode import errors
from vnode.config.loader import load_settings
from vnode.kube.thresholds import DEFAULT_HARD, Threshold, parse_reserved, parse_thresholds
from vnode.metrics import resource
from vnode.metrics.node import NodeMetrics, NodeReadings, PodStartTracker, operation_type
from vnode.runtime.cgroups import CgroupDriver, cgroup_mounts, pod_cgroup_parent
from vnode.stats import pressure
from vnode.stats.collector import ContainerSample, PodSample, RateTracker, Snapshot, StatsCollector, Usage
from vnode.stats.host import FsReading, HostSample, NetReading, parse_keyed, read_cpu_ns
from vnode.stats.summary import build_summary

S = 1_000_000_000
T0 = 1_700_000_000 * S
GiB = 1 << 30
MiB = 1 << 20


def host_sample(time_ns: int = T0, **changes: Any) -> HostSample:
    base = HostSample(
        time_ns=time_ns, boot_time=1_699_000_000.0, cpu_ns=5000 * S + (time_ns - T0), memory_total=8 * GiB,
        memory_available=6 * GiB, memory_usage=3 * GiB, memory_working_set=2 * GiB, memory_rss=GiB,
        page_faults=10, major_page_faults=1, rootfs=FsReading(100 * GiB, 60 * GiB, 40 * GiB, 1000, 900),
        pid_max=4096, processes=300, network=NetReading("eth0", 1, 0, 2, 0),
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def collector(tmp_path: Path, fake: FakeStatsRuntime, clock: Clock) -> StatsCollector:
    return StatsCollector(
        fake,  # type: ignore[arg-type]
        "n1", tmp_path, tmp_path / "logs", max_age=0, read_host=lambda root: host_sample(clock()),
    )  # fmt: skip


def two_container_pod() -> list[FakePod]:
    return [FakePod("web", containers=[FakeContainer("a", cores=0.5), FakeContainer("b", cores=0.25)])]


async def test_cpu_rates_come_from_consecutive_samples(tmp_path: Path) -> None:
    clock = Clock()
    fake = FakeStatsRuntime(two_container_pod(), "n1", clock=clock, image_mount=str(tmp_path))
    stats = collector(tmp_path, fake, clock)
    first = await stats.snapshot()
    assert [c.usage.nano_cores for c in first.pods[0].containers] == [None, None]
    assert first.node_usage.nano_cores is None
    clock.now += 10 * S
    second = await stats.snapshot()
    pod = second.pods[0]
    assert [c.usage.nano_cores for c in pod.containers] == [S // 2, S // 4]
    assert pod.from_sandbox and pod.usage.nano_cores == 3 * S // 4
    assert second.node_usage.nano_cores == S  # host_sample's cpu grows one core
    assert pod.process_count == 3 and pod.network is not None and pod.network.rx_bytes == 1000
    assert second.imagefs is not None and second.imagefs.used == 100 * MiB


async def test_pod_is_the_sum_of_its_containers_when_sandbox_stats_fail(tmp_path: Path) -> None:
    clock = Clock()
    fake = FakeStatsRuntime(two_container_pod(), "n1", clock=clock, sandbox_stats_fail=True)
    stats = collector(tmp_path, fake, clock)
    await stats.snapshot()
    clock.now += 2 * S
    pod = (await stats.snapshot()).pods[0]
    assert not pod.from_sandbox and "ListPodSandboxStats" in (stats.sandbox_stats_error or "")
    assert pod.usage.cpu_ns == sum(c.usage.cpu_ns or 0 for c in pod.containers)
    assert pod.usage.working_set == sum(c.usage.working_set or 0 for c in pod.containers)
    assert pod.usage.nano_cores == 3 * S // 4


async def test_one_sample_serves_concurrent_requests(tmp_path: Path) -> None:
    clock = Clock()
    fake = FakeStatsRuntime(two_container_pod(), "n1", clock=clock)
    stats = StatsCollector(fake, "n1", tmp_path, tmp_path / "logs", max_age=60,  # type: ignore[arg-type]
                           read_host=lambda root: host_sample())  # fmt: skip
    await asyncio.gather(*(stats.snapshot() for _ in range(5)))
    once = {"ListContainers": 1, "ListPodSandbox": 1, "ListPodSandboxStats": 1, "ImageFsInfo": 1}
    assert fake.calls == once  # the sandbox stats carried the containers': no ListContainerStats


def test_rate_tracker_skips_restarts_and_same_instants() -> None:
    rates = RateTracker()
    assert rates.rate("c", 100, T0) is None
    assert rates.rate("c", 200, T0) is None
    assert rates.rate("c", 50, T0 + S) is None  # counter went back: a new container
    assert rates.rate("c", 50 + S, T0 + 2 * S) == S
    rates.keep_only(set())
    assert rates.rate("c", 10, T0 + 3 * S) is None


NODE_KEYS = {
    "nodeName",
    "systemContainers",
    "startTime",
    "cpu",
    "memory",
    "network",
    "fs",
    "runtime",
    "rlimit",
}
POD_KEYS = {"podRef", "startTime", "containers", "cpu", "memory", "network", "volume", "ephemeral-storage",
            "process_stats"}  # fmt: skip
CONTAINER_KEYS = {"name", "startTime", "cpu", "memory", "rootfs", "logs"}


async def test_summary_has_kubelets_keys(tmp_path: Path) -> None:
    clock = Clock()
    fake = FakeStatsRuntime(two_container_pod(), "n1", clock=clock, image_mount=str(tmp_path))
    stats = collector(tmp_path, fake, clock)
    await stats.snapshot()
    clock.now += S
    doc = build_summary(await stats.snapshot(), "n1")
    node = doc["node"]
    assert set(node) == NODE_KEYS
    assert [c["name"] for c in node["systemContainers"]] == ["kubelet", "pods"]
    assert set(node["cpu"]) == {"time", "usageNanoCores", "usageCoreNanoSeconds"}
    assert set(node["memory"]) == {"time", "availableBytes", "usageBytes", "workingSetBytes", "rssBytes",
                                   "pageFaults", "majorPageFaults"}  # fmt: skip
    assert set(node["fs"]) == {"time", "availableBytes", "capacityBytes", "usedBytes", "inodesFree", "inodes",
                               "inodesUsed"}  # fmt: skip
    assert set(node["runtime"]) == {"imageFs", "containerFs"}
    assert node["rlimit"] == {"time": node["rlimit"]["time"], "maxpid": 4096, "curproc": 300}
    assert set(node["network"]) == {
        "time",
        "name",
        "rxBytes",
        "rxErrors",
        "txBytes",
        "txErrors",
        "interfaces",
    }
    (pod,) = doc["pods"]
    assert set(pod) == POD_KEYS and pod["podRef"] == {
        "name": "web",
        "namespace": "default",
        "uid": fake.pods[0].uid,
    }
    assert pod["process_stats"] == {"process_count": 3}
    assert [set(c) for c in pod["containers"]] == [CONTAINER_KEYS, CONTAINER_KEYS]
    assert pod["containers"][0]["cpu"]["usageNanoCores"] == S // 2
    assert pod["startTime"].endswith("Z") and len(pod["startTime"]) == 20

    small = build_summary(await stats.snapshot(), "n1", only_cpu_and_memory=True)
    assert set(small["node"]) == {"nodeName", "systemContainers", "startTime", "cpu", "memory"}
    assert set(small["pods"][0]) == {"podRef", "startTime", "containers", "cpu", "memory"}
    assert set(small["pods"][0]["containers"][0]) == {"name", "startTime", "cpu", "memory"}


def snapshot_for_exposition() -> Snapshot:
    def container(name: str, cpu: int | None, ws: int | None) -> ContainerSample:
        return ContainerSample(name, f"id-{name}", 1_699_999_000.5, Usage(T0 + 1_500_000, cpu, None, ws))

    pods = [
        PodSample("default", "web", "u1", 1_699_999_000.0,
                  [container("app", 12_500_000_000, 10 * MiB), container("side", 1_000_000, 2 * MiB)],
                  Usage(T0 + 2_000_000, 12_501_000_000, None, 12 * MiB)),
        PodSample("kube-system", "new", "u2", 1_699_999_999.0,
                  [container("fresh", 0, 0)], Usage(T0, 0, None, 0)),
        PodSample("default", "half", "u3", 1_699_999_999.0,
                  [container("ok", 3 * S, MiB), container("starting", None, None)],
                  Usage(T0 + 3_000_000, 3 * S, None, MiB)),
    ]  # fmt: skip
    return Snapshot(T0, host_sample(T0), Usage(T0 + 999_999, 5000 * S, None, 2 * GiB), None, pods)


GOLDEN = """\
# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="app",namespace="default",pod="web"} 12.5 1700000000001
container_cpu_usage_seconds_total{container="side",namespace="default",pod="web"} 0.001 1700000000001
container_cpu_usage_seconds_total{container="ok",namespace="default",pod="half"} 3 1700000000001
# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container="app",namespace="default",pod="web"} 10485760 1700000000001
container_memory_working_set_bytes{container="side",namespace="default",pod="web"} 2097152 1700000000001
container_memory_working_set_bytes{container="ok",namespace="default",pod="half"} 1048576 1700000000001
# HELP container_start_time_seconds [STABLE] Start time of the container since unix epoch in seconds
# TYPE container_start_time_seconds gauge
container_start_time_seconds{container="app",namespace="default",pod="web"} 1699999000.5 1700000000001
container_start_time_seconds{container="side",namespace="default",pod="web"} 1699999000.5 1700000000001
container_start_time_seconds{container="ok",namespace="default",pod="half"} 1699999000.5 1700000000001
# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 5000 1700000000000
# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes
# TYPE node_memory_working_set_bytes gauge
node_memory_working_set_bytes 2147483648 1700000000000
# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the pod in core-seconds
# TYPE pod_cpu_usage_seconds_total counter
pod_cpu_usage_seconds_total{namespace="default",pod="web"} 12.501 1700000000002
pod_cpu_usage_seconds_total{namespace="default",pod="half"} 3 1700000000003
# HELP pod_memory_working_set_bytes [STABLE] Current working set of the pod in bytes
# TYPE pod_memory_working_set_bytes gauge
pod_memory_working_set_bytes{namespace="default",pod="web"} 12582912 1700000000002
pod_memory_working_set_bytes{namespace="default",pod="half"} 1048576 1700000000003
# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE resource_scrape_error gauge
resource_scrape_error 0
"""  # noqa: E501


def test_resource_metrics_exposition_is_what_metrics_server_reads() -> None:
    text = resource.render(snapshot_for_exposition())
    assert text == GOLDEN
    decoded = decode(text)
    assert decoded.problems == []  # no zero sample: metrics-server keeps every pod listed
    assert set(decoded.pods) == {("default", "web"), ("default", "half")}  # "new" has no numbers yet
    assert set(decoded.pods[("default", "half")]) == {"ok"}  # "starting" left out, not reported as 0
    assert decoded.node is not None and decoded.node.timestamp == T0 // 1_000_000 / 1000
    app = decoded.pods[("default", "web")]["app"]
    assert (app.cpu, app.memory, app.start) == (12.5, 10 * MiB, 1_699_999_000.5)


def test_rules_checker_catches_what_metrics_server_drops() -> None:
    zero = 'container_cpu_usage_seconds_total{container="a",namespace="n",pod="p"} 0 1\n'
    no_time = "node_cpu_usage_seconds_total 5\nnode_memory_working_set_bytes 5\n"
    assert decode(zero + no_time).problems  # a 0 container drops its pod; node samples need a time


def test_scrape_error_when_something_could_not_be_read() -> None:
    snap = dataclasses.replace(snapshot_for_exposition(), errors=["ImageFsInfo: unavailable"])
    assert resource.render(snap).endswith("resource_scrape_error 1\n")


def test_eviction_hard_syntax() -> None:
    parsed = parse_thresholds(DEFAULT_HARD)
    assert [t.signal for t in parsed] == ["memory.available", "nodefs.available", "nodefs.inodesFree",
                                          "imagefs.available", "imagefs.inodesFree"]  # fmt: skip
    assert parsed[0] == Threshold("memory.available", quantity=100 * MiB, given="100Mi")
    assert parsed[1].percentage == Decimal("0.1") and parsed[1].limit(1000) == 100
    for bad, words in [
        ("memory.avail<1Gi", "unknown signal"),
        ("memory.available>1Gi", "expected"),
        ("nodefs.available<110%", "between"),
        ("pid.available<1,pid.available<2", "twice"),
    ]:
        with pytest.raises(errors.InvalidInput, match=words):
            parse_thresholds(bad)  # fmt: skip
    assert parse_reserved("cpu=250m,memory=1Gi,pid=100") == {"cpu": 250, "memory": GiB, "pid": 100}
    with pytest.raises(errors.ConfigError, match="--eviction-hard"):
        load_settings(None, {"--eviction-hard": "memory.available<lots"})
    with pytest.raises(errors.ConfigError, match=r"resources\.kubeReserved"):
        load_settings(None, {"resources.kubeReserved": {"gpu": "1"}})
    settings = load_settings(None, {"resources.evictionHard": {"memory.available": "1Gi"}})
    assert settings.resources.eviction_hard == (Threshold("memory.available", quantity=GiB, given="1Gi"),)


class FakeStats:
    """A stats source whose host numbers the test sets."""

    def __init__(self) -> None:
        self.host = host_sample()
        self.pods: list[PodSample] = []
        self.imagefs: FsReading | None = FsReading(50 * GiB, 40 * GiB, 10 * GiB, 100, 90)

    async def snapshot(self, max_age: float | None = None, *, files: bool = True) -> Snapshot:
        return Snapshot(T0, self.host, Usage(T0, 1, None, 1), self.imagefs, list(self.pods))


async def test_memory_pressure_holds_for_the_transition_period_and_evicts_besteffort_first() -> None:
    stats = FakeStats()
    now = [0.0]
    flips: list[str] = []
    evicted: list[tuple[str, str]] = []

    async def evict(uid: str, message: str) -> bool:
        evicted.append((uid, message))
        return True

    pods = [
        {"metadata": {"uid": "g", "name": "g"}, "spec": {"containers": [
            {"name": "c", "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                        "limits": {"cpu": "1", "memory": "1Gi"}}}]}},
        {"metadata": {"uid": "be", "name": "be"}, "spec": {"containers": [{"name": "c"}]}},
        {"metadata": {"uid": "crit", "name": "crit"},
         "spec": {"priority": 2000001000, "containers": [{"name": "c"}]}},
    ]  # fmt: skip

    def usage(uid: str, ws: int) -> PodSample:
        c = ContainerSample("c", uid, 0.0, Usage(T0, 1, None, ws))
        return PodSample("default", uid, uid, 0.0, [c], Usage(T0, 1, None, ws))

    stats.pods = [usage("g", 900 * MiB), usage("be", 50 * MiB), usage("crit", 3 * GiB)]
    monitor = pressure.PressureMonitor(
        stats, parse_thresholds("memory.available<1Gi,pid.available<100"), transition_period=300,
        record_event=flips.append, pods=lambda: pods, evict=evict, clock=lambda: now[0],
    )  # fmt: skip
    await monitor.check()
    assert not monitor.active("MemoryPressure") and flips == [] and evicted == []

    stats.host = host_sample(memory_working_set=int(7.5 * GiB))  # 512Mi left
    await monitor.check()
    assert (
        "MemoryPressure",
        True,
        "KubeletHasInsufficientMemory",
        "kubelet has insufficient memory available",
    ) in (monitor.conditions())
    assert flips == ["NodeHasInsufficientMemory"]
    assert [uid for uid, _ in evicted] == ["be"]  # BestEffort over its (zero) request; never the critical one
    assert evicted[0][1] == (
        "The node was low on resource: memory. Threshold quantity: 1Gi, available: 524288Ki. "
        "Container c was using 51200Ki, request is 0, has larger consumption of memory."
    )

    stats.host = host_sample()
    now[0] = 299
    await monitor.check()
    assert monitor.active("MemoryPressure") and len(flips) == 1  # held for the transition period
    now[0] = 301
    await monitor.check()
    assert not monitor.active("MemoryPressure") and flips == [
        "NodeHasInsufficientMemory",
        "NodeHasSufficientMemory",
    ]

    stats.host = host_sample(processes=4000)  # 96 pids left, below 100
    await monitor.check()
    assert monitor.active("PIDPressure") and flips[-1] == "NodeHasInsufficientPID"
    kinds = {kind: (on, reason) for kind, on, reason, _ in monitor.conditions()}
    assert kinds["PIDPressure"] == (True, "KubeletHasInsufficientPID")
    assert kinds["DiskPressure"] == (False, "KubeletHasNoDiskPressure")


async def test_disk_pressure_reclaims_first_and_is_not_raised_when_that_suffices() -> None:
    stats = FakeStats()
    stats.imagefs = FsReading(100 * GiB, 10 * GiB, 90 * GiB, 100, 90)  # 10% free, threshold 15%
    reclaimed: list[int] = []

    async def reclaim() -> int:
        stats.imagefs = FsReading(100 * GiB, 30 * GiB, 70 * GiB, 100, 90)
        reclaimed.append(1)
        return 20 * GiB

    monitor = pressure.PressureMonitor(stats, parse_thresholds(DEFAULT_HARD), reclaim_disk=reclaim)
    await monitor.check()
    assert reclaimed == [1] and not monitor.active("DiskPressure")

    async def nothing() -> int:
        return 0

    stats.imagefs = FsReading(100 * GiB, 10 * GiB, 90 * GiB, 100, 90)
    monitor = pressure.PressureMonitor(stats, parse_thresholds(DEFAULT_HARD), reclaim_disk=nothing)
    await monitor.check()
    assert monitor.active("DiskPressure") and "imagefs.available" in monitor.signals


def test_allocatable_subtracts_reserved_and_hard_thresholds() -> None:
    capacity = {"cpu": "4", "memory": "8388608Ki", "pods": "110", "ephemeral-storage": "104857600Ki"}
    got = pressure.allocatable(capacity, {"cpu": 500, "memory": GiB}, parse_thresholds(DEFAULT_HARD))
    assert got == {"cpu": "3500m", "memory": f"{(8 * GiB - GiB - 100 * MiB) // 1024}Ki", "pods": "110",
                   "ephemeral-storage": f"{int(100 * GiB * 0.9) // 1024}Ki"}  # fmt: skip
    assert pressure.allocatable(capacity, {}, ())["cpu"] == "4"


def test_pod_cgroup_parents_per_qos_and_driver() -> None:
    def pod(resources: dict[str, Any] | None) -> dict[str, Any]:
        container: dict[str, Any] = {"name": "c", **({"resources": resources} if resources else {})}
        return {"metadata": {"uid": "1-2-3"}, "spec": {"containers": [container]}}

    guaranteed = pod({"limits": {"cpu": "1", "memory": "1Gi"}})
    burstable = pod({"requests": {"memory": "1Gi"}})
    best = pod(None)
    assert [pod_cgroup_parent(p, "cgroupfs") for p in (guaranteed, burstable, best)] == [
        "/kubepods/pod1-2-3",
        "/kubepods/burstable/pod1-2-3",
        "/kubepods/besteffort/pod1-2-3",
    ]
    assert [pod_cgroup_parent(p, "systemd") for p in (guaranteed, burstable, best)] == [
        "kubepods-pod1_2_3.slice",
        "kubepods-burstable-pod1_2_3.slice",
        "kubepods-besteffort-pod1_2_3.slice",
    ]
    mountinfo = ("30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
                 "31 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
                 "32 25 0:28 / /proc rw - proc proc rw\n")  # fmt: skip
    assert cgroup_mounts(mountinfo) == [Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup/unified")]


async def test_cgroup_driver_asks_the_runtime_once() -> None:
    asked: list[int] = []

    async def runtime() -> str | None:
        asked.append(1)
        return "systemd"

    driver = CgroupDriver(None, runtime)
    assert [await driver.get(), await driver.get()] == ["systemd", "systemd"] and asked == [1]

    async def old_runtime() -> str | None:
        return None  # Unimplemented (containerd 1.x)

    assert await CgroupDriver(None, old_runtime).get() == "cgroupfs"
    assert await CgroupDriver("systemd", old_runtime).get() == "systemd"
    with pytest.raises(errors.ConfigError, match=r"runtime\.cgroupDriver"):
        CgroupDriver("cgroupv3", old_runtime)


def test_host_readers() -> None:
    ticks = 100
    stat = "cpu  100 20 30 1000 50 5 5 0 0 0\ncpu0 1 1 1 1 1 1 1 1 1 1\n"
    assert read_cpu_ns(stat) == (100 + 20 + 30 + 5 + 5) * S // ticks
    assert parse_keyed("MemTotal:  1024 kB\nInactive(file):  10 kB\n") == {
        "MemTotal": 1 << 20,
        "Inactive(file)": 10240,
    }
    assert parse_keyed("pgfault 12\npgmajfault 3\n", sep=" ") == {"pgfault": 12, "pgmajfault": 3}


def test_node_metrics_exposition_parses() -> None:
    metrics = NodeMetrics()
    metrics.runtime_call("ListContainerStats", 0.01, False)
    metrics.runtime_call("RunPodSandbox", 0.2, True)
    metrics.rest_request("PATCH", "127.0.0.1:6443", "200")
    tracker = PodStartTracker(metrics.pod_started)
    running = {"startTime": "2026-01-01T00:00:00Z", "containerStatuses": [{"state": {"running": {}}}]}
    from datetime import UTC, datetime

    tracker.status("u", running, datetime(2026, 1, 1, 0, 0, 3, tzinfo=UTC))
    tracker.status("u", running, datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC))  # once per pod
    metrics.add_readings(NodeReadings(
        running_pods=lambda: 2, containers_by_state=lambda: {"running": 3, "exited": 1},
        link_online=lambda: False, offline_seconds=lambda: 12.5,
        store_info=lambda: {"map_size": 1 << 30, "used": 4096, "commits": 7}, events_backlog=lambda: 4,
    ))  # fmt: skip
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert value[("kubelet_running_pods", ())] == 2
    assert value[("kubelet_running_containers", (("container_state", "running"),))] == 3
    assert value[("kubelet_runtime_operations_total", (("operation_type", "list_container_stats"),))] == 1
    assert value[("kubelet_runtime_operations_errors_total", (("operation_type", "run_pod_sandbox"),))] == 1
    assert value[("rest_client_requests_total", (("code", "200"), ("host", "127.0.0.1:6443"),
                                                 ("method", "PATCH")))] == 1  # fmt: skip
    assert value[("kubelet_pod_start_duration_seconds_count", ())] == 1
    assert value[("kubelet_pod_start_duration_seconds_sum", ())] == 3
    assert value[("vnode_link_online", ())] == 0 and value[("vnode_offline_seconds_total", ())] == 12.5
    assert value[("vnode_store_used_bytes", ())] == 4096 and value[("vnode_events_backlog", ())] == 4
    assert "process_cpu_seconds_total" in value.__repr__() or "process_cpu_seconds" in families
    assert operation_type("ListPodSandboxStats") == "list_pod_sandbox_stats"


async def test_soft_threshold_sets_the_condition_at_once_and_evicts_after_its_grace_period() -> None:
    stats = FakeStats()
    now = [0.0]
    evicted: list[str] = []

    async def evict(uid: str, message: str) -> bool:
        evicted.append(uid)
        return True

    pod = {"metadata": {"uid": "be", "name": "be"}, "spec": {"containers": [{"name": "c"}]}}
    sample = ContainerSample("c", "be", 0.0, Usage(T0, 1, None, 10 * MiB))
    stats.pods = [PodSample("default", "be", "be", 0.0, [sample], Usage(T0, 1, None, 10 * MiB))]
    monitor = pressure.PressureMonitor(
        stats, (), soft=parse_thresholds("memory.available<1Gi"), soft_grace={"memory.available": 90.0},
        pods=lambda: [pod], evict=evict, clock=lambda: now[0],
    )  # fmt: skip
    stats.host = host_sample(memory_working_set=int(7.5 * GiB))
    await monitor.check()
    assert monitor.active("MemoryPressure") and evicted == []
    now[0] = 89
    await monitor.check()
    assert evicted == []
    now[0] = 90
    await monitor.check()
    assert evicted == ["be"]
    stats.host = host_sample()  # clear: the grace period starts again next time
    now[0] = 100
    await monitor.check()
    stats.host = host_sample(memory_working_set=int(7.5 * GiB))
    now[0] = 101
    await monitor.check()
    assert evicted == ["be"]


def test_soft_thresholds_need_grace_periods() -> None:
    with pytest.raises(
        errors.ConfigError, match=r"no grace period for the soft threshold memory\.available<1Gi"
    ):
        load_settings(None, {"--eviction-soft": "memory.available<1Gi"})
    flags = {
        "--eviction-soft": "memory.available<1Gi",
        "--eviction-soft-grace-period": "memory.available=1m30s",
    }
    settings = load_settings(None, flags)
    assert settings.resources.eviction_soft_grace_period == {"memory.available": 90.0}
    with pytest.raises(errors.ConfigError, match="--eviction-soft-grace-period"):
        load_settings(None, {"--eviction-soft-grace-period": "memory.available=soon"})
