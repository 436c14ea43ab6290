"""Pod spec -> CRI config mapping, quantities and pod validation."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cri_api.v1 import api_pb2

from vnode import errors
from vnode.kube import images
from vnode.kube.quantity import milli_cpu, parse_quantity, to_bytes
from vnode.runtime import labels, specs
from vnode.runtime.validation import validate_pod

CAPACITY = specs.NodeCapacity(cpus=2, memory=4 << 30)


def make_pod(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "metadata": {"name": "web", "namespace": "prod", "uid": "u-1", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "main", "image": "busybox:1.35"}], **spec},
    }
    return base


def test_quantities() -> None:
    assert parse_quantity("100m") == Decimal("0.1")
    assert milli_cpu("0.5") == 500 and milli_cpu("1") == 1000 and milli_cpu("0.0001") == 1
    assert to_bytes("16Mi") == 16 << 20 and to_bytes("1G") == 10**9 and to_bytes("1e3") == 1000
    assert to_bytes(128) == 128
    for bad in ("", "1.2.3", "12MB", "abc", True):
        with pytest.raises(errors.InvalidInput):
            parse_quantity(bad)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.35", "docker.io/library/busybox:1.35"),
        ("foo/bar:1", "docker.io/foo/bar:1"),
        ("registry.k8s.io/pause:3.6", "registry.k8s.io/pause:3.6"),
        ("localhost:5000/x", "localhost:5000/x:latest"),
        ("busybox@sha256:" + "a" * 64, "docker.io/library/busybox@sha256:" + "a" * 64),
    ],
)
def test_normalize_image(given: str, expected: str) -> None:
    assert images.normalize_image(given) == expected


def test_bad_image_name() -> None:
    with pytest.raises(errors.InvalidInput, match="invalid reference format"):
        images.normalize_image("Busy Box")


def test_image_pull_policy() -> None:
    assert images.image_pull_needed({"image": "busybox"}, present=True) is True
    assert images.image_pull_needed({"image": "busybox:1.35"}, present=True) is False
    assert images.image_pull_needed({"image": "busybox:1.35"}, present=False) is True
    assert images.image_pull_needed({"image": "x:1", "imagePullPolicy": "Never"}, present=False) is None
    assert images.image_pull_needed({"image": "x:1", "imagePullPolicy": "Never"}, present=True) is False
    assert images.image_pull_needed({"image": "x:1", "imagePullPolicy": "Always"}, present=True) is True


def test_sandbox_config_carries_identity_ports_namespaces_and_dns(tmp_path: Path) -> None:
    pod = make_pod(hostPID=True)
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": 80, "hostPort": 8080}]
    dns = specs.DNSSettings(cluster_dns=["10.96.0.10"], host_searches=["example.org"])
    config = specs.sandbox_config(pod, log_dir=tmp_path, attempt=2, dns=dns)
    assert config.metadata.name == "web" and config.metadata.uid == "u-1" and config.metadata.attempt == 2
    assert config.labels[labels.POD_UID] == "u-1" and config.labels["app"] == "web"
    assert config.hostname == "web"
    assert config.log_directory == str(tmp_path)
    assert config.port_mappings[0].host_port == 8080 and config.port_mappings[0].protocol == api_pb2.TCP
    ns = config.linux.security_context.namespace_options
    assert ns.pid == api_pb2.NODE and ns.network == api_pb2.POD
    assert list(config.dns_config.servers) == ["10.96.0.10"]
    assert list(config.dns_config.searches) == [
        "prod.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
        "example.org",
    ]
    assert list(config.dns_config.options) == ["ndots:5"]


def test_host_network_pod_uses_the_host_resolver(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\nsearch a.example b.example\noptions edns0\n")
    servers, searches, options = specs.read_resolv_conf(resolv)
    dns = specs.DNSSettings(
        cluster_dns=["10.96.0.10"], host_servers=servers, host_searches=searches, host_options=options
    )
    config = specs.sandbox_config(make_pod(hostNetwork=True), log_dir=tmp_path, attempt=0, dns=dns)
    assert list(config.dns_config.servers) == ["192.0.2.53"]
    assert list(config.dns_config.options) == ["edns0"]
    assert config.hostname == ""
    assert config.linux.security_context.namespace_options.network == api_pb2.NODE


def test_env_resolution_and_expansion() -> None:
    pod = make_pod(nodeName="n1")
    container = {
        "name": "main",
        "env": [
            {"name": "A", "value": "x"},
            {"name": "B", "value": "$(A)-$(MISSING)-$$(A)"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
    }
    ctx = specs.EnvContext(
        pod=pod, node_name="n1", pod_ip="10.0.0.1", host_ip="192.0.2.2", pod_ips=["10.0.0.1"]
    )
    env = specs.resolve_env(container, ctx)
    assert env == {
        "A": "x",
        "B": "x-$(MISSING)-$(A)",
        "POD": "web",
        "APP": "web",
        "IP": "10.0.0.1",
        "NODE": "n1",
    }


def test_container_config_resources_security_and_labels(tmp_path: Path) -> None:
    pod = make_pod()
    container = {
        "name": "main",
        "image": "busybox:1.35",
        "command": ["sh", "-c"],
        "args": ["echo $(GREETING)"],
        "workingDir": "/tmp",
        "resources": {
            "requests": {"cpu": "250m", "memory": "64Mi"},
            "limits": {"cpu": "500m", "memory": "128Mi"},
        },
        "securityContext": {
            "runAsUser": 1000,
            "readOnlyRootFilesystem": True,
            "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
        },
    }
    pod["spec"]["containers"] = [container]
    config = specs.container_config(
        pod,
        container,
        kind="container",
        restart_count=3,
        image_ref="sha256:abc",
        env={"GREETING": "hi"},
        mounts=[],
        termination_log_host_path=tmp_path / "t",
        capacity=CAPACITY,
    )
    assert list(config.args) == ["echo hi"]
    assert config.log_path == "main/3.log" and config.metadata.attempt == 3
    assert config.annotations[labels.CONTAINER_RESTART_COUNT] == "3"
    assert config.annotations[labels.CONTAINER_HASH] == specs.container_hash(container)
    assert config.labels[labels.CONTAINER_NAME] == "main"
    res = config.linux.resources
    assert res.cpu_shares == 256 and res.cpu_quota == 50_000 and res.cpu_period == 100_000
    assert res.memory_limit_in_bytes == 128 << 20
    assert 2 <= res.oom_score_adj <= 999
    sc = config.linux.security_context
    assert sc.run_as_user.value == 1000 and sc.readonly_rootfs
    assert list(sc.capabilities.add_capabilities) == ["CAP_NET_ADMIN"]
    assert list(sc.capabilities.drop_capabilities) == ["ALL"]
    assert config.mounts[-1].container_path == "/dev/termination-log"


def test_validation_reports_field_paths() -> None:
    assert validate_pod(make_pod()) == []
    bad = make_pod(restartPolicy="Sometimes", volumes=[{"name": "cfg", "configMap": {"name": "x"}}])
    bad["metadata"]["name"] = "Bad_Name"
    bad["spec"]["containers"].append({"name": "main", "image": ""})
    bad["spec"]["containers"][0]["volumeMounts"] = [{"name": "nope", "mountPath": "data"}]
    bad["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}
    problems = "\n".join(validate_pod(bad))
    for expected in (
        "metadata.name: Invalid value",
        "spec.restartPolicy: Unsupported value",
        "spec.volumes[0].configMap: needs the API server",
        "spec.containers[1].name: Duplicate value",
        "spec.containers[1].image: Required value",
        "spec.containers[0].volumeMounts[0].name: Not found",
        "spec.containers[0].volumeMounts[0].mountPath: Invalid value",
        "spec.containers[0].resources.requests[cpu]: Invalid value",
    ):
        assert expected in problems
    assert validate_pod({"metadata": {"name": "x"}}) == ["spec: Required value"]
