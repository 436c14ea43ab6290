"""The LMDB store: durable group-committed writes, schema version, refusal of unreadable stores."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from vnode import errors
from vnode.store import SCHEMA_VERSION, Delete, Put, Store


async def test_writes_survive_reopen(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s")
    await store.write([Put("pods", "u1", {"a": 1}), Put("pods", "u2", [1, 2])])
    await store.delete("pods", "u2")
    await store.put("podstate", "u1", {"attempts": {"c": 3}})
    await store.close()
    again = await Store.open(tmp_path / "s")
    try:
        assert again.items("pods") == [("u1", {"a": 1})]
        assert again.get("podstate", "u1") == {"attempts": {"c": 3}}
        assert again.get("meta", "schema") == SCHEMA_VERSION
        assert again.get("nothing", "x") is None and again.items("nothing") == []
    finally:
        await again.close()


async def test_concurrent_writes_are_grouped_into_few_commits(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s")
    try:
        before = store.commits
        await asyncio.gather(*(store.put("t", f"k{i}", i) for i in range(200)))
        assert len(store.items("t")) == 200
        assert store.commits - before < 200
    finally:
        await store.close()


async def test_other_schema_version_is_refused_naming_the_file(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s")
    await store.put("meta", "schema", 99)
    await store.close()
    with pytest.raises(errors.StoreError, match=r"data\.mdb has schema version 99"):
        await Store.open(tmp_path / "s")


async def test_garbage_file_is_refused_not_wiped(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"not an lmdb file" * 512)
    with pytest.raises(errors.StoreError, match=r"data\.mdb"):
        await Store.open(path)
    assert (path / "data.mdb").read_bytes().startswith(b"not an lmdb file")


async def test_full_map_grows_then_reports_store_full(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s", map_size=1 << 20, max_map_size=4 << 20)
    try:
        await store.put("t", "a", "x" * (1500 << 10))  # beyond the first map: grows
        assert store.info()["map_size"] > 1 << 20
        with pytest.raises(errors.StoreFull):
            await store.put("t", "b", "x" * (8 << 20))
        await store.write([Delete("t", "a")])  # the writer survives a full map
    finally:
        await store.close()


async def test_unserialisable_value_fails_that_write_only(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s")
    try:
        with pytest.raises(errors.StoreError):
            await store.put("t", "a", object())
        await store.put("t", "b", 1)
        assert store.get("t", "b") == 1
    finally:
        await store.close()


BURST_WRITER = """
import sys
from vnode.store import Put, Store
store = Store.open_sync(sys.argv[1], map_size=64 << 20)
for i in range(100000):
    store.write_sync([Put("burst", f"k{i:06d}", {"i": i, "pad": "x" * 2000}), Put("meta2", "last", i)])
    print(i, flush=True)  # after the write is durable
"""


async def test_store_killed_mid_write_opens_clean_with_every_acknowledged_write(tmp_path: Path) -> None:
    """A writer SIGKILLed in the middle of a burst (a power cut): the store opens, and every write
    it had acknowledged is there, whole; nothing after the last one is half there."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BURST_WRITER, str(tmp_path / "s"), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    acknowledged = -1
    while acknowledged < 300:
        acknowledged = int(await proc.stdout.readline())
    proc.kill()
    await proc.wait()
    store = await Store.open(tmp_path / "s")
    try:
        rows = store.items("burst")
        last = store.get("meta2", "last")
        assert last >= acknowledged
        assert [key for key, _ in rows] == [f"k{i:06d}" for i in range(last + 1)]  # whole transactions
        assert all(value == {"i": i, "pad": "x" * 2000} for i, (_, value) in enumerate(rows))
        await store.put("burst", "after", 1)  # and it takes writes again
    finally:
        await store.close()
