"""The integration harness: one private containerd per session, and no sandbox left behind.

The fixtures are synchronous (subprocess and a blocking gRPC channel) so that async tests with
function-scoped event loops can share the session's containerd.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from integration.containerd import Containerd, unmount_under
from integration.fakecri import FakeRuntime
from integration.kube import KubeCluster
from integration.kube.view import ClusterView
from integration.node import VnodeProcess, running_node
from vnode.runtime.cri import CriClient


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def containerd() -> Iterator[Containerd]:
    instance = Containerd()
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """The real control plane (etcd, three kube-apiservers, controller-manager, scheduler), built
    from its Go modules on first use and shared by the session's cluster-facing tests."""
    with KubeCluster(tmp_path_factory.mktemp("kube"), masters=3) as cluster:
        yield cluster


@pytest.fixture
async def cluster(kube: KubeCluster, request: pytest.FixtureRequest) -> AsyncIterator[ClusterView]:
    """This test's namespace on the real cluster; its nodes and their pods are removed after it."""
    view = await ClusterView(kube, request.node.name).open()
    try:
        yield view
    finally:
        await view.close()


@pytest.fixture
async def node(containerd: Containerd, tmp_path: Path) -> AsyncIterator[VnodeProcess]:
    """A standalone vnode (static pods only) on the session's containerd; modules that need
    another kind of node define their own ``node``."""
    async with running_node(tmp_path, containerd.endpoint) as proc:
        yield proc


@pytest.fixture
async def cri(containerd: Containerd) -> AsyncIterator[CriClient]:
    """A CRI client of the session's containerd, as the tests' own view of the runtime."""
    client = CriClient(containerd.endpoint, timeout=30)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeRuntime]:
    """The fake CRI runtime (``integration/fakecri.py``) in a process of its own, for this test."""
    runtime = FakeRuntime(tmp_path / "fakecri")
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture(autouse=True)
def _no_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: remove the sandboxes it left, then unmount what its pods mounted.

    vnode leaves pods running when it stops (by design), so their sandboxes and the tmpfs of
    ``medium: Memory`` emptyDirs under the test's temp dir outlive the test's node process.
    """
    instance: Containerd | None = None
    if "containerd" in request.fixturenames:
        instance = request.getfixturevalue("containerd")
    tmp: Path | None = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if instance is not None:
        instance.remove_sandboxes()
    if tmp is not None:
        unmount_under(tmp)
