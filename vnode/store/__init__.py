"""The LMDB store: everything vnode must remember across its own restarts.

One environment (a directory under the root dir) with one named database per table; keys are
strings, values JSON. Reads are synchronous: LMDB reads are memory-mapped and take microseconds,
so they run on the caller's thread in their own read transaction. Writes go through a single
writer thread that commits every batch waiting in its queue in one transaction (group commit):
under a burst of status changes from many pod workers, the fsync cost is paid once per batch, not
once per write, and each ``write`` call still returns only when its operations are durable.

The store carries a schema version in its ``meta`` table. A store written by a newer or unknown
schema, or a file LMDB can't open, is refused with an error naming the path; it is never wiped.
Stale reader slots left by a killed process are cleared on open. When the map is full the writer
grows it (up to ``max_map_size``) and retries; past that, writes fail with ``StoreFull`` so callers
can degrade instead of crashing. ``open_readonly`` is for tools that read beside a running node
(``vnode status``): LMDB's own lock lets them read while it writes, and they can never write.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from vnode import errors
from vnode.store.layout import META

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_TABLES = 32


@dataclass(frozen=True)
class Put:
    table: str
    key: str
    value: Any


@dataclass(frozen=True)
class Delete:
    table: str
    key: str


Op = Put | Delete


@dataclass
class _Batch:
    ops: Sequence[Op]
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


class Store:
    """See the module docstring. Create with ``await Store.open(path)``."""

    def __init__(
        self, env: lmdb.Environment, path: Path, max_map_size: int, *, readonly: bool = False
    ) -> None:
        self._env = env
        self.readonly = readonly
        self.path = path
        self.max_map_size = max_map_size
        self._dbs: dict[str, Any] = {}
        # Held around opening a table and around every write transaction. py-lmdb's open_db takes
        # LMDB's write lock without releasing the GIL: a reader opening a table while the writer
        # thread's transaction waited for the GIL deadlocked both (seen under load). Waiting for
        # this lock releases the GIL.
        self._dbs_lock = threading.RLock()
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._closed = False
        self.commits = 0  # transactions committed, for benchmarks and `vnode status`
        if not readonly:
            self._writer.start()

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, *, map_size: int = 1 << 30, max_map_size: int | None = None) -> Store:
        return await asyncio.to_thread(cls.open_sync, path, map_size=map_size, max_map_size=max_map_size)

    @classmethod
    def open_sync(cls, path: Path, *, map_size: int = 1 << 30, max_map_size: int | None = None) -> Store:
        path = Path(path)
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.StoreError(f"cannot create the store directory {path}: {exc}") from exc
        data = path / "data.mdb"
        current = data.stat().st_size if data.exists() else 0
        try:
            env = lmdb.open(
                str(path),
                map_size=max(map_size, current),
                max_dbs=MAX_TABLES,
                subdir=True,
                metasync=True,
                sync=True,
                lock=True,
            )
        except lmdb.Error as exc:
            raise errors.StoreError(
                f"cannot open the store {data}: {exc}; move it aside to start empty"
            ) from exc
        try:
            stale = env.reader_check()
            if stale:
                log.info("store %s: cleared %d stale reader slot(s)", path, stale)
            store = cls(env, path, max_map_size or max(map_size * 8, 8 << 30))
            store._check_schema(data)
        except BaseException:
            env.close()
            raise
        return store

    @classmethod
    def open_readonly(cls, path: Path) -> Store:
        """The store at ``path`` for reading only, also while a running node writes it; refuses a
        directory without a store, and a schema this vnode does not read."""
        path = Path(path)
        data = path / "data.mdb"
        if not data.exists():
            raise errors.StoreError(f"no store at {path}")
        try:
            env = lmdb.open(str(path), max_dbs=MAX_TABLES, subdir=True, readonly=True, lock=True)
        except lmdb.Error as exc:
            raise errors.StoreError(f"cannot open the store {data}: {exc}") from exc
        store = cls(env, path, 0, readonly=True)
        try:
            version = store.get(META, "schema")
        except BaseException:
            env.close()
            raise
        if version != SCHEMA_VERSION:
            env.close()
            raise errors.StoreError(
                f"store {data} has schema version {version!r}; this vnode reads version {SCHEMA_VERSION}"
            )
        return store

    def _check_schema(self, data: Path) -> None:
        try:
            version = self.get(META, "schema")
        except errors.StoreError as exc:
            raise errors.StoreError(
                f"store {data} is unreadable: {exc}; move it aside to start empty"
            ) from exc
        if version is None:
            if any(True for _ in self.tables()):
                raise errors.StoreError(
                    f"store {data} has data but no schema version; move it aside to start empty"
                )
            self.write_sync([Put(META, "schema", SCHEMA_VERSION)])
            return
        if version != SCHEMA_VERSION:
            raise errors.StoreError(
                f"store {data} has schema version {version!r}; this vnode reads version {SCHEMA_VERSION}"
            )

    def _db(self, table: str, *, create: bool) -> Any:
        db = self._dbs.get(table)
        if db is not None:
            return db
        with self._dbs_lock:
            db = self._dbs.get(table)
            if db is None:
                try:
                    db = self._env.open_db(table.encode(), create=create)
                except lmdb.NotFoundError:
                    return None
                except lmdb.Error as exc:
                    raise errors.StoreError(f"store {self.path}: table {table}: {exc}") from exc
                self._dbs[table] = db
            return db

    def claim(self, owner: dict[str, Any]) -> None:
        """Tag the store with ``owner`` (the cluster and node it caches), or refuse a store tagged
        for another: serving a node's pods from another cluster's objects must never happen."""
        tag = self.get(META, "owner")
        if tag is None:
            self.write_sync([Put(META, "owner", owner)])
        elif tag != owner:
            raise errors.StoreError(
                f"store {self.path} holds the cache of another cluster or node ({_describe(tag)}), not of "
                f"this one ({_describe(owner)}); move {self.path} aside to start with an empty cache"
            )

    # -- reading -----------------------------------------------------------------------------

    def tables(self) -> Iterator[str]:
        """Names of the tables that exist, other than ``meta``."""
        with self._env.begin() as txn:
            for key, _ in txn.cursor():
                name = bytes(key).decode()
                if name != META:
                    yield name

    def get(self, table: str, key: str) -> Any:
        db = self._db(table, create=False)
        if db is None:
            return None
        try:
            with self._env.begin(db=db) as txn:
                raw = txn.get(key.encode())
        except lmdb.Error as exc:
            raise errors.StoreError(f"store {self.path}: {exc}") from exc
        return None if raw is None else _decode(raw, table, key)

    def items(self, table: str) -> list[tuple[str, Any]]:
        """Every (key, value) of ``table``, in key order, read in one transaction."""
        db = self._db(table, create=False)
        if db is None:
            return []
        try:
            with self._env.begin(db=db) as txn:
                rows = [(bytes(k).decode(), bytes(v)) for k, v in txn.cursor()]
        except lmdb.Error as exc:
            raise errors.StoreError(f"store {self.path}: {exc}") from exc
        return [(k, _decode(v, table, k)) for k, v in rows]

    def info(self) -> dict[str, int]:
        """Map size and used bytes, for monitoring the headroom."""
        stat, info = self._env.stat(), self._env.info()
        used = (info["last_pgno"] + 1) * stat["psize"]
        return {"map_size": int(info["map_size"]), "used": int(used), "commits": self.commits}

    # -- writing -----------------------------------------------------------------------------

    async def put(self, table: str, key: str, value: Any) -> None:
        await self.write([Put(table, key, value)])

    async def delete(self, table: str, key: str) -> None:
        await self.write([Delete(table, key)])

    async def write(self, ops: Sequence[Op]) -> None:
        """Apply ``ops`` atomically; returns once they are committed to disk."""
        if self._closed or self.readonly:
            raise errors.StoreError(f"store {self.path} is {'closed' if self._closed else 'read-only'}")
        loop = asyncio.get_running_loop()
        batch = _Batch(list(ops), loop.create_future(), loop)
        self._queue.put(batch)
        await batch.future

    def write_sync(self, ops: Sequence[Op]) -> None:
        """``write`` for code without a loop (opening, tools); bypasses the writer thread."""
        if self.readonly:
            raise errors.StoreError(f"store {self.path} is read-only")
        self._commit([_encode_op(op) for op in ops])

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batches = [first]
            stop = False
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batches.append(nxt)
            self._commit_batches(batches)
            if stop:
                return

    def _commit_batches(self, batches: list[_Batch]) -> None:
        try:
            encoded = [_encode_op(op) for b in batches for op in b.ops]
            self._commit(encoded)
            failure: BaseException | None = None
        except errors.VnodeError as exc:
            failure = exc
        except Exception as exc:  # a bug in a caller's value: fail those writes, keep the writer
            failure = errors.StoreError(f"store {self.path}: {exc}")
        for b in batches:
            b.loop.call_soon_threadsafe(_settle, b.future, failure)

    def _commit(self, encoded: list[tuple[str, bytes, bytes | None]]) -> None:
        dbs = {table: self._db(table, create=True) for table, _, _ in encoded}
        for _ in range(8):
            try:
                with self._dbs_lock, self._env.begin(write=True) as txn:
                    for table, key, value in encoded:
                        db = dbs[table]
                        if value is None:
                            txn.delete(key, db=db)
                        else:
                            txn.put(key, value, db=db)
                self.commits += 1
                return
            except lmdb.MapFullError:
                if not self._grow():
                    raise errors.StoreFull(
                        f"store {self.path} is full at {self._env.info()['map_size']} bytes"
                    ) from None
            except lmdb.Error as exc:
                raise errors.StoreError(f"store {self.path}: {exc}") from exc
        raise errors.StoreFull(f"store {self.path} is full")

    def _grow(self) -> bool:
        size = int(self._env.info()["map_size"])
        if size >= self.max_map_size:
            return False
        new = min(size * 2, self.max_map_size)
        log.warning("store %s: map full at %d bytes; growing it to %d", self.path, size, new)
        self._env.set_mapsize(new)
        return True

    async def close(self) -> None:
        """Commit what is queued, stop the writer, flush and close the environment."""
        if self._closed:
            return
        if self.readonly:
            self.close_sync()
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._writer.join)
        self._env.sync(True)
        self._env.close()

    def close_sync(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.readonly:
            self._env.close()
            return
        self._queue.put(None)
        self._writer.join()
        self._env.sync(True)
        self._env.close()


def _describe(owner: Any) -> str:
    return (
        ", ".join(f"{k}={v}" for k, v in sorted(dict(owner).items()))
        if isinstance(owner, dict)
        else repr(owner)
    )


def _settle(future: asyncio.Future[None], failure: BaseException | None) -> None:
    if future.done():
        return
    if failure is None:
        future.set_result(None)
    else:
        future.set_exception(failure)


def _encode_op(op: Op) -> tuple[str, bytes, bytes | None]:
    key = op.key.encode()
    if not key or len(key) > 511:
        raise errors.StoreError(f"bad store key {op.key!r} in table {op.table}")
    if isinstance(op, Delete):
        return op.table, key, None
    return op.table, key, json.dumps(op.value, separators=(",", ":"), sort_keys=True).encode()


def _decode(raw: bytes, table: str, key: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise errors.StoreError(f"store entry {table}/{key} is not valid JSON: {exc}") from exc
