"""``vnode status`` on a populated store: the facts (``--output json``), the readable summary, the
probes of the node and the runtime, and the read-only store it reads them from."""

from __future__ import annotations

import http.server
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vnode import errors
from vnode.app import rootlock, status
from vnode.app.running import run_record
from vnode.cli import main
from vnode.config.settings import NodeSettings, ServerSettings, Settings
from vnode.store import Put, Store
from vnode.store import layout as L

README = Path(__file__).parents[2] / "README.md"


def _pod(name: str, uid: str) -> dict[str, Any]:
    return {"source": "file", "pod": {"metadata": {"name": name, "namespace": "default", "uid": uid}}}


BACKING_OFF = {"name": "main", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off"}}}


def _event(n: int, kind: str, reason: str, name: str = "bad") -> tuple[str, dict[str, Any]]:
    return f"{n:012d}", {
        "time": f"2026-12-04T06:00:{n:02d}.123456+00:00",  # as the event log keeps it
        "namespace": "default",
        "name": name,
        "uid": "u-bad",
        "type": kind,
        "reason": reason,
        "message": f"{reason} #{n}",
        "kind": "Pod",
    }


def populate(root: Path, *, run: dict[str, Any] | None = None) -> None:
    """A store as a node that ran pods leaves it: pods in three phases, one whose sync fails,
    Normal and Warning Events, an offline link, MQTT sessions, a retained message, a device."""
    store = Store.open_sync(root / "store")
    problem = {
        "message": "RemoveContainer c-1: container is in starting state",
        "since": "2026-12-04T04:00:00Z",
    }
    ops = [
        Put(L.META, "owner", {"node": "edge-1", "caHash": "ab12"}),
        Put(L.LINK, L.LINK_STATE, {"offlineSince": "2026-12-04T05:00:00Z"}),
        Put(L.PODS, "u-1", _pod("web", "u-1")),
        Put(L.PODS, "u-2", _pod("db", "u-2")),
        Put(L.PODS, "u-3", _pod("job", "u-3")),
        Put(L.PODS, "u-bad", _pod("bad", "u-bad")),
        Put(L.PODSTATE, "u-1", {"status": {"phase": "Running"}}),
        Put(L.PODSTATE, "u-2", {"status": {"phase": "Running"}, "problem": problem}),
        Put(L.PODSTATE, "u-3", {"status": {"phase": "Succeeded"}}),
        Put(L.PODSTATE, "u-bad", {"status": {"phase": "Pending", "containerStatuses": [BACKING_OFF]}}),
        Put(L.EVENTS, "000000000001", {"reason": "Started"}),
        Put(L.EVENTS, L.EVENTS_DROPPED, 2),
        Put(L.OBJECTS, "configmap/default/cfg", {"object": {}}),
        Put(L.MQTT_SESSIONS, "mapper", {"subscriptions": {"a/#": 1}, "queue": [["a/b", "", 1, False]] * 2}),
        Put(L.MQTT_SESSIONS, "gone", {"subscriptions": {"c": 1}, "queue": [["c", "", 1, False]]}),
        Put(L.MQTT_RETAINED, "a/b", {"payload": "", "qos": 0}),
        Put(
            L.DEVICE_TWINS,
            "default/thermo",
            {"id": "default/thermo", "state": "online", "twin": {"t": {"actual": {"value": "18"}}}},
        ),
    ]
    for n in range(1, 9):  # 8 Warnings between Normals: the last 5 Warnings are shown
        ops += [
            Put(L.EVENTLOG, *_event(2 * n, "Warning", "Failed")),
            Put(L.EVENTLOG, *_event(2 * n + 1, "Normal", "Pulling")),
        ]
    if run is not None:
        ops.append(Put(L.META, L.META_RUN, run))
    store.write_sync(ops)
    store.close_sync()


def recorded_run(root: Path, **extra: Any) -> dict[str, Any]:
    return {
        "pid": 4242,
        "started": "2026-12-04T03:00:00Z",
        "node": "edge-1",
        "version": "0.1.0",
        "runtimeEndpoint": f"unix://{root}/no-containerd.sock",
        **extra,
    }


def test_the_facts_of_a_stopped_node(tmp_path: Path) -> None:
    populate(tmp_path, run=recorded_run(tmp_path, stopped="2026-12-04T04:30:00Z"))
    facts = status.gather(tmp_path)

    assert facts["node"] == "edge-1" and facts["cluster"] == {"caHash": "ab12"}
    assert facts["vnode"] == {
        "running": False,
        "pid": 4242,
        "version": "0.1.0",
        "started": "2026-12-04T03:00:00Z",
        "stopped": "2026-12-04T04:30:00Z",
        "healthz": None,
    }
    assert facts["link"] == {"state": "offline", "activeMaster": None, "offlineSince": "2026-12-04T05:00:00Z"}
    runtime = facts["runtime"]
    assert runtime["endpoint"] == f"unix://{tmp_path}/no-containerd.sock"
    assert runtime["answers"] is False and runtime["version"] is None and runtime["error"]
    pods = facts["pods"]
    assert pods["total"] == 4
    assert pods["byPhase"] == {"Pending": 1, "Running": 2, "Succeeded": 1}
    assert [(p["name"], p["phase"], p["reason"]) for p in pods["items"]] == [
        ("bad", "Pending", "ImagePullBackOff"),
        ("db", "Running", None),
        ("job", "Succeeded", None),
        ("web", "Running", None),
    ]
    assert pods["syncFailing"] == [
        {
            "namespace": "default",
            "name": "db",
            "message": "RemoveContainer c-1: container is in starting state",
            "since": "2026-12-04T04:00:00Z",
        }
    ]
    assert [w["time"] for w in facts["warnings"]] == [f"2026-12-04T06:00:{2 * n:02d}Z" for n in range(4, 9)]
    assert facts["warnings"][-1] == {
        "time": "2026-12-04T06:00:16Z",
        "kind": "Pod",
        "namespace": "default",
        "name": "bad",
        "reason": "Failed",
        "message": "Failed #16",
    }
    assert facts["events"] == {"waiting": 1, "dropped": 2}
    assert facts["offlineCache"] == {"configmap": 1}
    assert facts["mqtt"] == {
        "sessions": 2,
        "queued": 3,
        "retained": 1,
        "outbox": 0,
        "devices": [
            {"id": "default/thermo", "state": "online", "twins": {"t": {"actual": "18", "expected": None}}}
        ],
    }


def test_the_summary_reads_as_the_facts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    populate(tmp_path, run=recorded_run(tmp_path, stopped="2026-12-04T04:30:00Z"))
    assert main(["status", "--root-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == (
        "node edge-1: vnode not running "
        "(last run: pid 4242 from 2026-12-04T03:00:00Z until 2026-12-04T04:30:00Z)"
    )
    assert lines[1] == "control plane: unreachable, running offline since 2026-12-04T05:00:00Z"
    assert lines[2].startswith(f"runtime: unix://{tmp_path}/no-containerd.sock does not answer: ")
    assert "pods: 4 (1 Pending, 2 Running, 1 Succeeded)" in lines
    assert "  default/bad\tPending\tfile\tImagePullBackOff" in lines
    assert (
        "  default/db\tRunning\tfile\tsync failing since 2026-12-04T04:00:00Z: "
        "RemoveContainer c-1: container is in starting state"
    ) in lines
    warnings = lines[lines.index("last Warning events (newest last, at most 5):") + 1 :]
    assert warnings == [
        f"  2026-12-04T06:00:{2 * n:02d}Z\tdefault/bad\tFailed: Failed #{2 * n}" for n in range(4, 9)
    ]
    assert "events waiting to be posted: 1 (2 dropped)" in lines
    assert (
        "mqtt: 2 persistent session(s), 1 retained message(s), 0 waiting for the external broker; "
        "3 queued for persistent sessions' clients"
    ) in lines
    assert "device default/thermo\tonline\tt=18/- (actual/expected)" in lines
    assert "offline cache: 1 configmap" in lines


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok" if self.path == "/healthz" else b"[-]runtime failed\nhealthz check failed"
        self.send_response(200 if self.path == "/healthz" else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def healthz() -> Iterator[str]:
    """A real HTTP server in a thread answering /healthz as a healthy node does (else failing)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_a_running_node_is_the_lock_holder_and_its_healthz_is_asked(tmp_path: Path, healthz: str) -> None:
    """This test's process plays the running node: it holds the root dir's lock."""
    populate(tmp_path, run=recorded_run(tmp_path, pid=os.getpid(), healthz=f"{healthz}/healthz"))
    assert status.gather(tmp_path)["vnode"]["running"] is False  # a record alone is no running node
    lock = rootlock.acquire(tmp_path)
    try:
        facts = status.gather(tmp_path)
        assert facts["vnode"]["running"] is True
        assert facts["vnode"]["pid"] == os.getpid()  # the lock's holder, from /proc/locks
        assert facts["vnode"]["stopped"] is None
        assert facts["vnode"]["healthz"] == {"url": f"{healthz}/healthz", "ok": True, "answer": "ok"}
        line = status.render(facts).splitlines()[0]
        assert (
            line == f"node edge-1: vnode 0.1.0 running (pid {os.getpid()}, since 2026-12-04T03:00:00Z), "
            "/healthz ok"
        )

        populate(tmp_path, run=recorded_run(tmp_path, pid=os.getpid(), healthz=f"{healthz}/healthz?verbose"))
        failing = status.gather(tmp_path)
        assert failing["vnode"]["healthz"]["ok"] is False
        assert "/healthz failing: [-]runtime failed healthz check failed" in status.render(failing)

        populate(tmp_path, run=recorded_run(tmp_path, healthz=f"{healthz}/healthz"))  # an earlier run's
        starting = status.gather(tmp_path)["vnode"]
        assert starting == {
            "running": True,
            "pid": os.getpid(),
            "version": None,
            "started": None,
            "stopped": None,
            "healthz": None,
        }
        assert status.render(status.gather(tmp_path)).startswith(
            f"node edge-1: vnode starting (pid {os.getpid()})\n"
        )
    finally:
        lock.release()
    assert status.lock_holder(tmp_path) is None


def test_standalone_node_without_a_run_record(tmp_path: Path) -> None:
    store = Store.open_sync(tmp_path / "store")
    store.write_sync([Put(L.PODS, "u-1", _pod("web", "u-1"))])  # no state yet: not synced
    store.close_sync()
    facts = status.gather(tmp_path, probe=False)
    assert facts["node"] is None and facts["link"]["state"] == "standalone"
    assert facts["runtime"] == {"endpoint": "unix:///run/containerd/containerd.sock"}
    assert facts["pods"]["byPhase"] == {"Pending": 1}
    text = status.render(facts)
    assert text.splitlines()[:2] == ["node (unnamed): vnode not running", "control plane: none (standalone)"]


def test_json_output_is_one_document_with_the_documented_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every key of ``--output json`` (to the second level) is named in the README's table."""
    populate(tmp_path, run=recorded_run(tmp_path))
    assert main(["status", "--root-dir", str(tmp_path), "--output", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document == json.loads(json.dumps(status.gather(tmp_path)))
    readme = README.read_text()
    section = readme[readme.index("### vnode status") :]
    section = section[: section.index("\n## ")]
    documented = set(re.findall(r"`([A-Za-z.]+)`", section))
    documented |= {key.split(".", 1)[0] for key in documented}  # `pods.total` documents `pods`
    keys = set(document)
    for key in ("vnode", "link", "runtime", "store", "pods", "events", "mqtt"):
        keys |= {f"{key}.{sub}" for sub in document[key]}
    assert keys - documented == set()


def test_no_store_is_an_error_and_nothing_is_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--root-dir", str(tmp_path), "-o", "json"]) == 1
    assert f"no store at {tmp_path / 'store'}" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_the_readonly_store_refuses_writes(tmp_path: Path) -> None:
    populate(tmp_path)
    store = Store.open_readonly(tmp_path / "store")
    try:
        assert store.get(L.PODS, "u-1") == _pod("web", "u-1")
        assert store.get("no-such-table", "k") is None
        with pytest.raises(errors.StoreError, match="read-only"):
            store.write_sync([Put(L.PODS, "u-9", {})])
    finally:
        store.close_sync()


@pytest.mark.parametrize(
    ("bind", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:10248/healthz"),
        ("0.0.0.0", "http://127.0.0.1:10248/healthz"),  # any address: asked on loopback
        ("::", "http://[::1]:10248/healthz"),
        ("fd00::5", "http://[fd00::5]:10248/healthz"),
    ],
)
def test_the_run_record_names_where_healthz_answers(bind: str, url: str) -> None:
    settings = Settings(
        node=NodeSettings(name="edge-1"), server=ServerSettings(healthz_bind_address=bind, healthz_port=10248)
    )
    node: Any = SimpleNamespace(healthz=SimpleNamespace(bound_port=10248))
    record = run_record(settings, node)
    assert record["healthz"] == url
    assert (record["pid"], record["node"], record["runtimeEndpoint"]) == (
        os.getpid(),
        "edge-1",
        "unix:///run/containerd/containerd.sock",
    )
    node.healthz = None  # --healthz-port=0: nothing to ask
    assert "healthz" not in run_record(settings, node)
