"""configMap/secret references: env, envFrom, volume files, and the atomic file swap."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from vnode import errors
from vnode.runtime import apiobjects, specs
from vnode.runtime.volumes import write_atomic

CM = {"data": {"a": "1", "b": "2"}}
SECRET = {"data": {"pw": base64.b64encode(b"s3cret").decode()}}
OBJECTS: apiobjects.Objects = {
    ("configmaps", "cm"): CM,
    ("secrets", "sec"): SECRET,
    ("configmaps", "gone"): None,
}


def pod(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": spec}


def ctx(p: dict[str, Any]) -> specs.EnvContext:
    return specs.EnvContext(pod=p, node_name="n", pod_ip="", host_ip="", pod_ips=[])


def test_env_from_then_env_with_optional_references() -> None:
    container = {
        "envFrom": [
            {"prefix": "X_", "configMapRef": {"name": "cm"}},
            {"configMapRef": {"name": "gone", "optional": True}},
        ],
        "env": [
            {"name": "X_a", "value": "override"},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}},
            {"name": "NO", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "zz", "optional": True}}},
        ],
    }
    p = pod(containers=[container])
    assert specs.resolve_env(container, ctx(p), OBJECTS) == {"X_a": "override", "X_b": "2", "PW": "s3cret"}
    assert apiobjects.references(p) == {("configmaps", "cm"), ("configmaps", "gone"), ("secrets", "sec")}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"configMapKeyRef": {"name": "gone", "key": "a"}}, 'configmap "gone" not found'),
        ({"configMapKeyRef": {"name": "cm", "key": "zz"}}, "couldn't find key zz in ConfigMap ns/cm"),
        ({"secretKeyRef": {"name": "sec", "key": "zz"}}, "couldn't find key zz in Secret ns/sec"),
    ],
)
def test_missing_required_references_are_errors(source: dict[str, Any], message: str) -> None:
    container = {"env": [{"name": "V", "valueFrom": source}]}
    with pytest.raises(errors.InvalidInput, match=message):
        specs.resolve_env(container, ctx(pod(containers=[container])), OBJECTS)


def test_standalone_refuses_api_references() -> None:
    container = {"envFrom": [{"configMapRef": {"name": "cm"}}]}
    with pytest.raises(errors.InvalidInput, match="needs the API server"):
        specs.resolve_env(container, ctx(pod(containers=[container])), None)


def test_volume_files_with_items_modes_and_optional() -> None:
    p = pod(
        volumes=[
            {
                "name": "v1",
                "configMap": {"name": "cm", "items": [{"key": "a", "path": "dir/a.txt", "mode": 0o600}]},
            },
            {"name": "v2", "secret": {"secretName": "sec", "defaultMode": 0o400}},
            {"name": "v3", "configMap": {"name": "gone", "optional": True}},
        ]
    )
    assert apiobjects.volume_files(p, OBJECTS) == {
        "v1": {"dir/a.txt": (b"1", 0o600)},
        "v2": {"pw": (b"s3cret", 0o400)},
        "v3": {},
    }
    with pytest.raises(errors.InvalidInput, match="non-existent config key: zz"):
        apiobjects.volume_files(
            pod(volumes=[{"name": "v", "configMap": {"name": "cm", "items": [{"key": "zz"}]}}]), OBJECTS
        )


def test_atomic_write_swaps_data_and_keeps_unchanged(tmp_path: Path) -> None:
    target = tmp_path / "vol"
    assert write_atomic(target, {"a": (b"1", 0o644), "sub/b": (b"2", 0o600)})
    first = os.readlink(target / "..data")
    assert (target / "a").read_bytes() == b"1" and (target / "sub" / "b").read_bytes() == b"2"
    assert os.readlink(target / "a") == "..data/a"
    assert not write_atomic(target, {"a": (b"1", 0o644), "sub/b": (b"2", 0o600)})
    assert write_atomic(target, {"a": (b"changed", 0o644)})
    assert os.readlink(target / "..data") != first and not (target / first).exists()
    assert (target / "a").read_bytes() == b"changed" and not (target / "sub").exists()


def _docker_secret(config: dict[str, Any], key: str = ".dockerconfigjson") -> dict[str, Any]:
    return {
        "type": "kubernetes.io/dockerconfigjson",
        "data": {key: base64.b64encode(json.dumps(config).encode()).decode()},
    }


def test_pull_auth_from_image_pull_secrets() -> None:
    userpass = base64.b64encode(b"me:pw").decode()
    objects: apiobjects.Objects = {
        ("secrets", "missing"): None,
        ("secrets", "other"): _docker_secret({"auths": {"quay.io": {"auth": userpass}}}),
        ("secrets", "hub"): _docker_secret({"auths": {"https://index.docker.io/v1/": {"auth": userpass}}}),
        ("secrets", "old"): _docker_secret(
            {"registry.example:5000": {"username": "u", "password": "p"}}, ".dockercfg"
        ),
    }
    p = pod(imagePullSecrets=[{"name": "missing"}, {"name": "other"}, {"name": "hub"}, {"name": "old"}])
    assert ("secrets", "hub") in apiobjects.references(p)
    hub = apiobjects.pull_auth(p, "docker.io/library/busybox:1.35", objects)
    assert hub == {"server_address": "docker.io", "username": "me", "password": "pw"}
    old = apiobjects.pull_auth(p, "registry.example:5000/app:1", objects)
    assert old == {"server_address": "registry.example:5000", "username": "u", "password": "p"}
    assert apiobjects.pull_auth(p, "ghcr.io/x/y:1", objects) is None


def test_projected_and_downward_api_volumes() -> None:
    p = pod(
        volumes=[
            {
                "name": "sa",
                "projected": {
                    "defaultMode": 0o640,
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "path": "token",
                                "audience": "api",
                                "expirationSeconds": 600,
                            }
                        },
                        {"configMap": {"name": "cm", "items": [{"key": "a", "path": "a"}]}},
                        {
                            "downwardAPI": {
                                "items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                            }
                        },
                    ],
                },
            },
            {
                "name": "info",
                "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]},
            },
        ]
    )
    assert apiobjects.token_requests(p) == {("api", 600)}

    def field(item: dict[str, Any]) -> str:
        return {"metadata.namespace": "ns", "metadata.name": "p"}[item["fieldRef"]["fieldPath"]]

    files = apiobjects.volume_files(p, OBJECTS, {("api", 600): "t.o.k"}, field)
    assert files == {
        "sa": {"token": (b"t.o.k", 0o640), "a": (b"1", 0o640), "ns": (b"ns", 0o640)},
        "info": {"name": (b"p", 0o644)},
    }
    with pytest.raises(errors.InvalidInput, match="token not available"):
        apiobjects.volume_files(p, OBJECTS, {}, field)
