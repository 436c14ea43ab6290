"""The integration harness: one private containerd per session, and no sandbox left behind.

The fixtures are synchronous (subprocess and a blocking gRPC channel) so that async tests with
function-scoped event loops can share the session's containerd.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.containerd import Containerd


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


@pytest.fixture(autouse=True)
def _no_leftover_sandboxes(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used containerd, remove whatever sandboxes it left."""
    yield
    if "containerd" in request.fixturenames:
        instance: Containerd = request.getfixturevalue("containerd")
        instance.remove_sandboxes()
