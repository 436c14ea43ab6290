"""A stand-in for the CRI calls the stats collector makes, for unit tests and bench/metrics.py.

It answers with real ``cri_api`` messages shaped as containerd 1.6 fills them (which fields are
set is compared with a real containerd in ``tests/integration/test_stats.py``): running
containers with the kubelet labels and creation times, ``ContainerStats`` with cumulative CPU
that advances with the clock (``cores`` per container), working set, usage, RSS, page faults and
the writable layer, ready sandboxes, ``PodSandboxStats`` from the pod cgroup (or the
``UNKNOWN`` error containerd gives for a sandbox without one), and the image filesystem.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cri_api.v1 import api_pb2

from vnode import errors
from vnode.runtime import labels


@dataclass
class FakeContainer:
    name: str
    cores: float = 0.25
    working_set: int = 8 << 20
    id: str = ""


@dataclass
class FakePod:
    name: str
    namespace: str = "default"
    uid: str = ""
    containers: list[FakeContainer] = field(default_factory=lambda: [FakeContainer("main")])
    host_network: bool = False  # containerd reports no network for a pod in the host's namespace
    sandbox_id: str = ""


def _u64(value: int) -> api_pb2.UInt64Value:
    return api_pb2.UInt64Value(value=value)


class FakeStatsRuntime:
    def __init__(
        self,
        pods: list[FakePod],
        node_name: str,
        *,
        clock: Callable[[], int] = time.time_ns,
        image_mount: str = "/",
        sandbox_stats_fail: bool = False,
    ) -> None:
        self.pods = pods
        self.node_name = node_name
        self.clock = clock
        self.image_mount = image_mount
        self.sandbox_stats_fail = sandbox_stats_fail
        self.started = clock() - 60_000_000_000
        self.calls: dict[str, int] = {}
        self.cpu_seconds = 0.0  # this process's CPU time spent in the stand-in (the benchmark's)
        for i, pod in enumerate(pods):
            pod.uid = pod.uid or f"00000000-0000-0000-0000-{i:012d}"
            pod.sandbox_id = pod.sandbox_id or f"sb{i:062d}"
            for j, c in enumerate(pod.containers):
                c.id = c.id or f"c{i:031d}{j:032d}"

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _deliver(self, started: float, messages: list[Any]) -> list[Any]:
        """The messages as the client gets them: serialized here (the stand-in's CPU time, counted
        in ``cpu_seconds``), parsed on the caller's side (its own, as from a real gRPC reply)."""
        wire = [m.SerializeToString() for m in messages]
        self.cpu_seconds += time.thread_time() - started
        return [type(m).FromString(b) for m, b in zip(messages, wire, strict=True)]

    def _labels(self, pod: FakePod, container: FakeContainer | None = None) -> dict[str, str]:
        out = {labels.POD_NAME: pod.name, labels.POD_NAMESPACE: pod.namespace, labels.POD_UID: pod.uid,
               labels.NODE_LABEL: self.node_name}  # fmt: skip
        if container is not None:
            out[labels.CONTAINER_NAME] = container.name
        return out

    def _stats(self, pod: FakePod, c: FakeContainer, now: int) -> Any:
        cpu_ns = int((now - self.started) * c.cores)
        return api_pb2.ContainerStats(
            attributes=api_pb2.ContainerAttributes(
                id=c.id, metadata=api_pb2.ContainerMetadata(name=c.name), labels=self._labels(pod, c)
            ),
            cpu=api_pb2.CpuUsage(
                timestamp=now, usage_core_nano_seconds=_u64(cpu_ns), usage_nano_cores=_u64(int(c.cores * 1e9))
            ),
            memory=api_pb2.MemoryUsage(
                timestamp=now,
                working_set_bytes=_u64(c.working_set),
                usage_bytes=_u64(c.working_set + 4096),
                available_bytes=_u64(0),
                rss_bytes=_u64(c.working_set // 2),
                page_faults=_u64(1000),
                major_page_faults=_u64(1),
            ),
            writable_layer=api_pb2.FilesystemUsage(
                timestamp=now,
                fs_id=api_pb2.FilesystemIdentifier(mountpoint=self.image_mount),
                used_bytes=_u64(4096),
                inodes_used=_u64(3),
            ),
        )

    async def list_containers(self, selector: Mapping[str, str]) -> list[Any]:
        self._count("ListContainers")
        started = time.thread_time()
        return self._deliver(
            started,
            [
                api_pb2.Container(
                    id=c.id,
                    pod_sandbox_id=pod.sandbox_id,
                    metadata=api_pb2.ContainerMetadata(name=c.name),
                    state=api_pb2.CONTAINER_RUNNING,
                    created_at=self.started,
                    labels=self._labels(pod, c),
                )
                for pod in self.pods
                for c in pod.containers
            ],
        )

    async def list_container_stats(self, selector: Mapping[str, str]) -> list[Any]:
        self._count("ListContainerStats")
        started = time.thread_time()
        now = self.clock()
        return self._deliver(started, [self._stats(pod, c, now) for pod in self.pods for c in pod.containers])

    async def list_pod_sandboxes(self, selector: Mapping[str, str]) -> list[Any]:
        self._count("ListPodSandbox")
        started = time.thread_time()
        return self._deliver(
            started,
            [
                api_pb2.PodSandbox(
                    id=pod.sandbox_id,
                    state=api_pb2.SANDBOX_READY,
                    created_at=self.started,
                    metadata=api_pb2.PodSandboxMetadata(name=pod.name, namespace=pod.namespace, uid=pod.uid),
                    labels=self._labels(pod),
                )
                for pod in self.pods
            ],
        )

    async def list_pod_sandbox_stats(self, selector: Mapping[str, str]) -> list[Any]:
        self._count("ListPodSandboxStats")
        started = time.thread_time()
        if self.sandbox_stats_fail:
            raise errors.RuntimeFailure("ListPodSandboxStats: failed to decode sandbox container metrics")
        now = self.clock()
        out = []
        for pod in self.pods:
            containers = [self._stats(pod, c, now) for c in pod.containers]
            cpu = sum(s.cpu.usage_core_nano_seconds.value for s in containers)
            ws = sum(s.memory.working_set_bytes.value for s in containers) + (256 << 10)  # + pause
            meta = api_pb2.PodSandboxMetadata(name=pod.name, namespace=pod.namespace, uid=pod.uid)
            interface = api_pb2.NetworkInterfaceUsage(
                name="eth0", rx_bytes=_u64(1000), rx_errors=_u64(0), tx_bytes=_u64(2000), tx_errors=_u64(0)
            )
            network = api_pb2.NetworkUsage(timestamp=now, default_interface=interface)
            linux = api_pb2.LinuxPodSandboxStats(
                cpu=api_pb2.CpuUsage(
                    timestamp=now, usage_core_nano_seconds=_u64(cpu), usage_nano_cores=_u64(cpu // 60)
                ),
                memory=api_pb2.MemoryUsage(
                    timestamp=now,
                    working_set_bytes=_u64(ws),
                    usage_bytes=_u64(ws),
                    available_bytes=_u64(0),
                    rss_bytes=_u64(ws // 2),
                    page_faults=_u64(1000),
                    major_page_faults=_u64(1),
                ),
                network=network,
                process=api_pb2.ProcessUsage(timestamp=now, process_count=_u64(len(pod.containers) + 1)),
                containers=containers,
            )
            if pod.host_network:
                linux.ClearField("network")
            attributes = api_pb2.PodSandboxAttributes(
                id=pod.sandbox_id, metadata=meta, labels=self._labels(pod)
            )
            out.append(api_pb2.PodSandboxStats(attributes=attributes, linux=linux))
        return self._deliver(started, out)

    async def image_fs_info(self) -> list[Any]:
        self._count("ImageFsInfo")
        started = time.thread_time()
        usage = api_pb2.FilesystemUsage(
            timestamp=self.clock(), fs_id=api_pb2.FilesystemIdentifier(mountpoint=self.image_mount),
            used_bytes=_u64(100 << 20), inodes_used=_u64(1000),
        )  # fmt: skip
        return self._deliver(started, [usage])
