"""Static pods from a manifest directory: naming, identity, defaults, and bad input."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from vnode.sources.manifests import ManifestSource, parse_documents

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: main
    image: busybox:1.35
"""


class Collector:
    def __init__(self) -> None:
        self.deliveries: list[list[dict[str, Any]]] = []

    async def __call__(self, source: str, pods: list[dict[str, Any]]) -> None:
        assert source == "file"
        self.deliveries.append(pods)

    @property
    def last(self) -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in self.deliveries[-1]}


@pytest.fixture
def collector() -> Collector:
    return Collector()


@pytest.fixture
def source(tmp_path: Path, collector: Collector) -> ManifestSource:
    return ManifestSource(tmp_path, "edge1", collector, now=lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))


async def test_static_pod_is_named_and_defaulted_as_kubelet_does(
    tmp_path: Path, source: ManifestSource, collector: Collector
) -> None:
    (tmp_path / "web.yaml").write_text(POD)
    await source.scan()
    pod = collector.last["web-edge1"]
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["namespace"] == "default"
    assert spec["nodeName"] == "edge1"
    assert meta["annotations"]["kubernetes.io/config.source"] == "file"
    assert meta["annotations"]["kubernetes.io/config.hash"] == meta["uid"]
    assert len(meta["uid"]) == 32
    assert spec["restartPolicy"] == "Always"
    assert spec["terminationGracePeriodSeconds"] == 30
    assert spec["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert spec["containers"][0]["terminationMessagePath"] == "/dev/termination-log"


async def test_same_manifest_same_uid_changed_manifest_new_uid(tmp_path: Path, collector: Collector) -> None:
    (tmp_path / "web.yaml").write_text(POD)
    first = ManifestSource(tmp_path, "edge1", collector)
    await first.scan()
    uid = collector.last["web-edge1"]["metadata"]["uid"]
    again = ManifestSource(tmp_path, "edge1", collector)  # a restarted vnode
    await again.scan()
    assert collector.last["web-edge1"]["metadata"]["uid"] == uid
    (tmp_path / "web.yaml").write_text(POD.replace("busybox:1.35", "busybox:1.36"))
    await again.scan()
    assert collector.last["web-edge1"]["metadata"]["uid"] != uid


async def test_unchanged_directory_is_not_delivered_again(
    tmp_path: Path, source: ManifestSource, collector: Collector
) -> None:
    (tmp_path / "web.yaml").write_text(POD)
    await source.scan()
    await source.scan()
    assert len(collector.deliveries) == 1


async def test_several_documents_json_and_hidden_files(
    tmp_path: Path, source: ManifestSource, collector: Collector
) -> None:
    (tmp_path / "two.yaml").write_text(POD + "---\n" + POD.replace("name: web", "name: api"))
    doc: dict[str, Any] = {"kind": "Pod", "metadata": {"name": "js"}, "spec": {"containers": []}}
    (tmp_path / "j.json").write_text(json.dumps(doc))
    (tmp_path / ".hidden.yaml").write_text(POD.replace("name: web", "name: hidden"))
    await source.scan()
    assert sorted(collector.last) == ["api-edge1", "js-edge1", "web-edge1"]


async def test_half_written_file_keeps_its_pods(
    tmp_path: Path, source: ManifestSource, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(POD)
    await source.scan()
    path.write_text(POD[:40] + "\n  labels: [unclosed")
    with caplog.at_level(logging.ERROR):
        await source.scan()
    assert "web-edge1" in collector.last
    assert "can't be parsed" in caplog.text and "line" in caplog.text
    assert len(collector.deliveries) == 1  # nothing changed for the manager


async def test_removed_file_removes_its_pods(
    tmp_path: Path, source: ManifestSource, collector: Collector
) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(POD)
    await source.scan()
    path.unlink()
    await source.scan()
    assert collector.last == {}


async def test_duplicates_not_pods_and_nameless_are_skipped(
    tmp_path: Path, source: ManifestSource, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a.yaml").write_text(POD)
    (tmp_path / "b.yaml").write_text(POD.replace("busybox:1.35", "busybox:9"))
    (tmp_path / "c.yaml").write_text("kind: ConfigMap\nmetadata: {name: x}\n")
    (tmp_path / "d.yaml").write_text("kind: Pod\nmetadata: {}\n")
    (tmp_path / "e.yaml").write_text("- just\n- a list\n")
    with caplog.at_level(logging.ERROR):
        await source.scan()
    assert list(collector.last) == ["web-edge1"]
    assert collector.last["web-edge1"]["spec"]["containers"][0]["image"] == "busybox:1.35"  # a.yaml wins
    assert "already defined in" in caplog.text
    assert "only Pod manifests" in caplog.text
    assert "metadata.name: Required value" in caplog.text
    assert "expected a mapping" in caplog.text


async def test_unknown_fields_are_warned_about(
    tmp_path: Path, source: ManifestSource, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "web.yaml").write_text(POD + "extra: 1\n")
    with caplog.at_level(logging.WARNING):
        await source.scan()
    assert "web-edge1" in collector.last
    assert "unknown field 'extra'" in caplog.text


async def test_missing_directory_means_no_pods(tmp_path: Path, collector: Collector) -> None:
    source = ManifestSource(tmp_path / "absent", "edge1", collector)
    await source.scan()
    assert collector.last == {}


def test_parse_documents_reports_where_yaml_breaks() -> None:
    with pytest.raises(ValueError, match="invalid YAML at line 3 column 1"):
        parse_documents("a: 1\nb: [\n")
    with pytest.raises(ValueError, match="invalid JSON"):
        parse_documents('{"a": ')
