"""The durable object cache: what a node keeps of configMaps, secrets and tokens for offline use.

A real LMDB store and a real HTTP master (aiohttp on loopback); "offline" is a master that
answers 500 to everything, and a "restart" is a new ObjectCache on the same store directory.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from integration.faults import FaultyMaster, serving
from vnode import errors
from vnode.clients.kubeconfig import ClusterAccess
from vnode.clients.masters import Masters
from vnode.controllers import objects
from vnode.controllers.objects import ObjectCache
from vnode.security.sealing import Sealer
from vnode.store import Store

PASSWORD = b"offline-secret-value"


class Master:
    """A master holding a few objects; ``objects[path] = obj`` changes them, ``None`` deletes."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any] | None] = {}
        self.tokens = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        if request.method == "POST" and request.path.endswith("/token"):
            self.tokens += 1
            return web.json_response({"status": {"token": f"token-{self.tokens}"}})
        obj = self.objects.get(request.path)
        if obj is None:
            return web.json_response({"kind": "Status", "code": 404, "message": "not found"}, status=404)
        return web.json_response(obj)


@pytest.fixture
async def master() -> AsyncIterator[Master]:
    state = Master()
    async with serving(state.handle) as state.url:
        yield state


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "store", map_size=16 << 20)
    try:
        yield opened
    finally:
        await opened.close()


def config_map(rv: str, value: str) -> dict[str, Any]:
    return {
        "kind": "ConfigMap",
        "metadata": {"name": "cm", "uid": "u1", "resourceVersion": rv},
        "data": {"k": value},
    }


SECRET = {
    "kind": "Secret",
    "metadata": {"name": "s", "uid": "u2", "resourceVersion": "7"},
    "data": {"password": base64.b64encode(PASSWORD).decode()},
}
CM_PATH = "/api/v1/namespaces/default/configmaps/cm"
SECRET_PATH = "/api/v1/namespaces/default/secrets/s"


async def cache_on(url: str, store: Store, key_file: Path) -> tuple[ObjectCache, Masters]:
    masters = Masters(ClusterAccess((url,), None))
    return ObjectCache(masters, store, Sealer(key_file)), masters


async def test_objects_survive_a_restart_while_offline(master: Master, store: Store, tmp_path: Path) -> None:
    master.objects[CM_PATH] = config_map("1", "v1")
    master.objects[SECRET_PATH] = SECRET
    online, masters = await cache_on(master.url, store, tmp_path / "key")
    try:
        assert (await online.get_object("configmaps", "default", "cm"))["data"] == {"k": "v1"}
        assert await online.get_object("secrets", "default", "s") == SECRET
        assert await online.get_object("configmaps", "default", "gone") is None
    finally:
        await masters.close()

    async with FaultyMaster("error") as dead:
        offline, masters = await cache_on(dead.url, store, tmp_path / "key")
        try:
            assert (await offline.get_object("configmaps", "default", "cm"))["data"] == {"k": "v1"}
            assert await offline.get_object("secrets", "default", "s") == SECRET
            assert await offline.get_object("configmaps", "default", "gone") is None  # known absent
            with pytest.raises(errors.Unavailable):
                await offline.get_object("configmaps", "default", "never-seen")
            assert dead.requests >= 4  # the API was asked first every time
        finally:
            await masters.close()


async def test_secrets_are_sealed_on_disk_and_need_their_key(
    master: Master, store: Store, tmp_path: Path
) -> None:
    master.objects[SECRET_PATH] = SECRET
    online, masters = await cache_on(master.url, store, tmp_path / "key")
    try:
        await online.get_object("secrets", "default", "s")
        await online.token({"metadata": {"name": "p", "uid": "pod-1"}}, "aud", 3600)
    finally:
        await masters.close()
    disk = (tmp_path / "store" / "data.mdb").read_bytes()
    assert SECRET["data"]["password"].encode() not in disk and PASSWORD not in disk
    assert b"token-1" not in disk
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600

    async with FaultyMaster("error") as dead:
        stranger, masters = await cache_on(dead.url, store, tmp_path / "other-key")
        try:
            with pytest.raises(errors.Unavailable):  # not opened with another key, never served
                await stranger.get_object("secrets", "default", "s")
        finally:
            await masters.close()


async def test_a_steady_object_is_written_once(master: Master, store: Store, tmp_path: Path) -> None:
    master.objects[CM_PATH] = config_map("1", "v1")
    for _ in range(3):  # three "restarts" online, each a fresh cache: nothing changed, no write
        cache, masters = await cache_on(master.url, store, tmp_path / "key")
        try:
            await cache.get_object("configmaps", "default", "cm")
            writes = cache.writes
        finally:
            await masters.close()
    assert writes == 0
    master.objects[CM_PATH] = config_map("2", "v2")
    cache, masters = await cache_on(master.url, store, tmp_path / "key")
    try:
        assert (await cache.get_object("configmaps", "default", "cm"))["data"] == {"k": "v2"}
        assert cache.writes == 1
    finally:
        await masters.close()


async def test_deleted_while_online_stays_deleted_offline(
    master: Master, store: Store, tmp_path: Path
) -> None:
    master.objects[CM_PATH] = config_map("1", "v1")
    cache, masters = await cache_on(master.url, store, tmp_path / "key")
    try:
        await cache.get_object("configmaps", "default", "cm")
    finally:
        await masters.close()
    master.objects[CM_PATH] = None
    cache, masters = await cache_on(master.url, store, tmp_path / "key")
    try:
        assert await cache.get_object("configmaps", "default", "cm") is None
    finally:
        await masters.close()
    async with FaultyMaster("error") as dead:
        offline, masters = await cache_on(dead.url, store, tmp_path / "key")
        try:
            assert await offline.get_object("configmaps", "default", "cm") is None
        finally:
            await masters.close()


async def test_tokens_are_served_offline_until_they_expire(
    master: Master, store: Store, tmp_path: Path
) -> None:
    pod = {"metadata": {"name": "p", "uid": "pod-1"}}
    cache, masters = await cache_on(master.url, store, tmp_path / "key")
    try:
        assert await cache.token(pod, "aud", 3600) == ("token-1", 3600.0)
        await cache.token(pod, "short", 0)  # issued already expired
    finally:
        await masters.close()
    async with FaultyMaster("error") as dead:
        offline, masters = await cache_on(dead.url, store, tmp_path / "key")
        try:
            token, left = await offline.token(pod, "aud", 3600)
            assert token == "token-1" and 3500 < left <= 3600
            with pytest.raises(errors.Unavailable):
                await offline.token(pod, "short", 0)
        finally:
            await masters.close()


async def test_a_fresh_token_kept_from_before_a_restart_is_used_again(
    master: Master, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = {"metadata": {"name": "p", "uid": "pod-1"}}
    cache, masters = await cache_on(master.url, store, tmp_path / "key")
    try:
        assert (await cache.token(pod, "aud", 3600))[0] == "token-1"
    finally:
        await masters.close()
    restarted, masters = await cache_on(master.url, store, tmp_path / "key")
    try:
        token, left = await restarted.token(pod, "aud", 3600)
        assert token == "token-1" and 3500 < left <= 3600 and master.tokens == 1  # no new TokenRequest
        now = time.time()
        monkeypatch.setattr(objects.time, "time", lambda: now + 2800)  # less than a quarter left
        assert (await restarted.token(pod, "aud", 3600))[0] == "token-2"
    finally:
        await masters.close()


async def test_a_store_of_another_cluster_is_refused(store: Store) -> None:
    store.claim({"caHash": "aaa", "node": "edge1"})
    store.claim({"caHash": "aaa", "node": "edge1"})  # the same owner again: fine
    with pytest.raises(errors.StoreError, match=r"another cluster or node.*move .* aside"):
        store.claim({"caHash": "bbb", "node": "edge1"})
    with pytest.raises(errors.StoreError, match="another cluster or node"):
        store.claim({"caHash": "aaa", "node": "edge2"})
