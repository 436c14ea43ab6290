"""Checks every test gets: no asyncio task may outlive the test that started it.

A task still pending when a test's own fixtures have been torn down is work nobody owns: in vnode
it would be a loop that is never cancelled on shutdown. The check waits briefly for tasks already
finishing (a cancelled task needs a turn of the loop to end), then fails the test with the names
and where each leaked task is suspended, and cancels them so the next test starts clean.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

SETTLE_SECONDS = 2.0  # for tasks already cancelled or completing to end on their own


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    before = set(asyncio.all_tasks())
    yield
    me = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not me and t not in before and not t.done()]
    if pending:
        _, pending_set = await asyncio.wait(pending, timeout=SETTLE_SECONDS)
        pending = list(pending_set)
    if not pending:
        return
    described = [f"{t.get_name()}: {t.get_coro()!r}" for t in pending]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    pytest.fail("tasks leaked out of the test:\n  " + "\n  ".join(described), pytrace=False)
