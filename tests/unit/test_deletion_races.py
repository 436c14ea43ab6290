"""The pod manager and the status writer at the edges: deletion races and a full store.

A pod from the API was being deleted when vnode was SIGKILLed, before the store forgot it (found
by the offline benchmark). At the restart the restored pod must finish its deletion, not start
again; and once its source no longer has it, the status writer must not make a mirror pod of it
(only static pods have mirrors). A full store degrades: the pod's sync goes on, the Node says so.
A container the runtime will not remove (a start a SIGKILL cut short) holds the deletion back with
retries on a back-off, said once and shown by ``vnode status``, until the runtime lets go.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp import web

from integration.faults import serving
from vnode import errors
from vnode.cli import main
from vnode.clients.kubeconfig import ClusterAccess
from vnode.clients.masters import Masters
from vnode.controllers.eventlog import EventLog
from vnode.controllers.node import NodeController, NodeIdentity
from vnode.controllers.pods import SOURCE, StatusWriter
from vnode.provider.types import ContainerObservation, ContainerState, SandboxObservation
from vnode.runtime import labels, specs
from vnode.runtime.backoff import Backoff
from vnode.runtime.context import WorkerContext
from vnode.runtime.cri import CriClient
from vnode.runtime.pods import PodManager
from vnode.runtime.volumes import VolumeManager
from vnode.runtime.worker import PodWorker
from vnode.store import Put, Store
from vnode.store.layout import PODS

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "default", "uid": "u-1"},
    "spec": {"containers": [{"name": "main", "image": "busybox"}]},
}
STATUS = {"phase": "Running"}


def worker_context(tmp_path: Path, cri: CriClient) -> WorkerContext:
    return WorkerContext(
        cri=cri,
        volumes=VolumeManager(tmp_path / "pods"),
        events=EventLog(),
        node_name="edge1",
        host_ip="127.0.0.1",
        logs_dir=tmp_path / "logs",
        dns=specs.DNSSettings(),
        crash_backoff=Backoff(10.0, 300.0),
        image_backoff=Backoff(10.0, 300.0),
    )


async def test_a_full_store_degrades_and_the_node_says_so(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "store", map_size=1 << 20, max_map_size=1 << 20)
    await store.write([Put(PODS, "u-1", {"source": SOURCE, "pod": POD})])
    cri = CriClient(f"unix://{tmp_path}/no-runtime.sock", timeout=1)
    manager = PodManager(worker_context(tmp_path, cri), store, sources=[SOURCE])
    try:
        manager.restore()
        with pytest.raises(errors.StoreFull):
            await store.put("filler", "x", "x" * (2 << 20))
        await manager._persist("u-1", {"status": STATUS, "pad": "x" * (2 << 20)})  # no exception
        assert manager.store_problem is not None

        async def version() -> str:
            return "containerd://test"

        node = NodeController(
            Masters(ClusterAccess(("http://127.0.0.1:1",), None)),
            NodeIdentity("edge1", "127.0.0.1", 10250, tmp_path, 110),
            runtime_version=version,
            runtime_problem=lambda: None,
            store_problem=lambda: manager.store_problem,
        )
        conditions = {c["type"]: c for c in (await node.node_status())["conditions"]}
        assert conditions["EdgeStoreFull"]["status"] == "True"
        assert conditions["EdgeStoreFull"]["reason"] == "StoreMapFull"
        assert conditions["Ready"]["status"] == "True"  # the pods run: the node stays Ready
        await manager._persist("u-1", {"status": STATUS})  # space for a small write again
        assert manager.store_problem is None
        conditions = {c["type"]: c for c in (await node.node_status())["conditions"]}
        assert conditions["EdgeStoreFull"]["status"] == "False"
    finally:
        await manager.stop()
        await cri.close()
        await store.close()


async def test_a_pod_restored_while_being_deleted_is_not_started_again(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "store", map_size=16 << 20)
    terminating = {**POD, "metadata": {**POD["metadata"], "deletionTimestamp": "2026-11-24T10:00:00Z"}}
    await store.write([Put(PODS, "u-1", {"source": SOURCE, "pod": terminating}), Put(PODS, "u-2", {
        "source": SOURCE, "pod": {**POD, "metadata": {**POD["metadata"], "uid": "u-2", "name": "kept"}}
    })])  # fmt: skip
    cri = CriClient(f"unix://{tmp_path}/no-runtime.sock", timeout=1)
    ctx = worker_context(tmp_path, cri)
    manager = PodManager(ctx, store, sources=[SOURCE])
    try:
        assert manager.restore() == 2
        deleting, kept = manager.worker("u-1"), manager.worker("u-2")
        assert deleting is not None and deleting.deleting
        assert kept is not None and not kept.deleting
    finally:
        await manager.stop()
        await cri.close()
        await store.close()


class Recorder:
    def __init__(self) -> None:
        self.requests: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.path}")
        body = await request.json()
        return web.json_response({**body, "metadata": {**body.get("metadata", {}), "uid": "m-1"}})


@pytest.fixture
async def api() -> AsyncIterator[tuple[Recorder, Masters]]:
    recorder = Recorder()
    async with serving(recorder.handle) as url:
        masters = Masters(ClusterAccess((url,), None))
        try:
            yield recorder, masters
        finally:
            await masters.close()


@pytest.mark.parametrize(
    ("source", "wanted"),
    [
        (None, []),  # its source let it go: it is being stopped
        (SOURCE, ["PATCH /api/v1/namespaces/default/pods/web/status"]),
        (
            "file",
            ["POST /api/v1/namespaces/default/pods", "PATCH /api/v1/namespaces/default/pods/web/status"],
        ),
    ],
)
async def test_only_static_pods_get_mirrors(
    api: tuple[Recorder, Masters], source: str | None, wanted: list[str]
) -> None:
    recorder, masters = api
    writer = StatusWriter(masters, OnePod(source), NoApiPods(), node_uid=lambda: "node-uid")
    writer.changed("u-1")
    await writer._write("u-1")
    assert recorder.requests == wanted


class OnePod:
    """The pod manager's side of the status writer's seam, holding ``POD`` from ``source``."""

    def __init__(self, source: str | None) -> None:
        self.source = source

    async def set_source_pods(self, source: str, pods: list[dict[str, Any]]) -> None:
        return None

    def status_of(self, uid: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        return POD, STATUS

    def source_of(self, uid: str) -> str | None:
        return self.source

    def known_uids(self) -> list[str]:
        return ["u-1"]

    def add_listener(self, callback: Callable[[str], None]) -> None:
        return None


class NoApiPods:
    """The informer's side: an API with no pods and no mirrors yet."""

    def pod(self, uid: str) -> dict[str, Any] | None:
        return None

    def api_status(self, uid: str) -> dict[str, Any] | None:
        return None

    def mirror(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    def on_listed(self, callback: Callable[[], None]) -> None:
        return None

    def on_mirrors_changed(self, callback: Callable[[], None]) -> None:
        return None


class StuckRuntime:
    """A runtime holding one pod whose container it will not remove (``in starting state``, as
    containerd answers for a task a SIGKILL left half-started) until ``release()``."""

    endpoint = "stub://stuck"

    def __init__(self) -> None:
        self.stuck = True
        self.refused = 0
        self.refused_thrice = asyncio.Event()
        self.sandboxes = {"sb-1"}
        self.containers = {"c-1"}
        self._labels = {labels.POD_UID: "u-1", labels.NODE_LABEL: "edge1"}

    async def list_pod_sandboxes(self, selector: dict[str, str]) -> list[Any]:
        return [SimpleNamespace(id=i, state=0, labels=self._labels) for i in self.sandboxes]

    async def list_containers(self, selector: dict[str, str]) -> list[Any]:
        return [
            SimpleNamespace(id=i, state=0, labels=self._labels, pod_sandbox_id="sb-1")
            for i in self.containers
        ]

    async def pod_sandbox_status(self, sandbox_id: str) -> SandboxObservation:
        return SandboxObservation(id=sandbox_id, ready=True)

    async def container_status(self, container_id: str) -> ContainerObservation:
        return ContainerObservation(id=container_id, name="main", attempt=0, state=ContainerState.CREATED)

    async def stop_container(self, container_id: str, timeout: int) -> None:
        return None

    async def remove_container(self, container_id: str) -> None:
        if self.stuck:
            self.refused += 1
            if self.refused >= 3:
                self.refused_thrice.set()
            raise errors.RuntimeFailure(f"RemoveContainer {container_id}: container is in starting state")
        self.containers.discard(container_id)

    async def stop_pod_sandbox(self, sandbox_id: str) -> None:
        return None

    async def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self.sandboxes.discard(sandbox_id)


async def test_a_container_the_runtime_will_not_remove_is_retried_with_back_off_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = StuckRuntime()
    saved: dict[str, dict[str, Any]] = {}

    async def persist(uid: str, state: dict[str, Any]) -> None:
        saved[uid] = state

    ctx = replace(worker_context(tmp_path, cast(CriClient, runtime)), crash_backoff=Backoff(0.01, 0.04))
    worker = PodWorker(ctx, POD, persist=persist, status_changed=lambda uid: None)
    worker.delete()
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(runtime.refused_thrice.wait(), 30)
        assert worker.problem is not None and "in starting state" in worker.problem["message"]
        assert saved["u-1"]["problem"] == worker.problem  # what `vnode status` shows
        warnings = [r for r in caplog.records if "sync failed" in r.getMessage()]
        assert len(warnings) == 1  # said once, not once per retry
        assert not worker.done.is_set()

        runtime.stuck = False
        await asyncio.wait_for(worker.done.wait(), 30)
        await asyncio.wait_for(task, 30)
        assert worker.problem is None
        assert not runtime.containers and not runtime.sandboxes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_vnode_status_shows_a_pod_whose_sync_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store.open_sync(tmp_path / "store")
    problem = {
        "message": "RemoveContainer c-1: container is in starting state",
        "since": "2026-12-04T04:00:00Z",
    }
    store.write_sync(
        [
            Put(PODS, "u-1", {"source": SOURCE, "pod": POD}),
            Put("podstate", "u-1", {"status": {"phase": "Running"}, "problem": problem}),
        ]
    )
    store.close_sync()
    assert main(["status", "--root-dir", str(tmp_path)]) == 0
    assert (
        "default/web\tRunning\tapi\tsync failing since 2026-12-04T04:00:00Z: "
        "RemoveContainer c-1: container is in starting state"
    ) in capsys.readouterr().out
