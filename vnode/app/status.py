"""``vnode status``: what a node is doing, from its root dir, whether or not it runs.

Everything comes from the store, opened read-only (LMDB's own lock lets a reader in beside the
running node; the root dir's lock is never taken, so a status never keeps a node from starting),
and from two probes: whether the runtime endpoint answers CRI ``Version``, and, when a vnode holds
the root dir's lock, whether its ``/healthz`` answers. ``gather`` returns the facts as one JSON
document (``--output json``; its keys are documented in the README and kept stable); ``render``
is the readable summary of the same facts.
"""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vnode import errors
from vnode.app.rootlock import LOCK_FILE
from vnode.config.settings import RuntimeSettings
from vnode.store import Store, layout

WARNINGS_SHOWN = 5  # the last Warning Events shown
PROBE_TIMEOUT = 3.0


def gather(root_dir: Path, *, probe: bool = True) -> dict[str, Any]:
    """The status of the node whose root dir is ``root_dir``; ``StoreError`` if it has no store.
    ``probe=False`` leaves out the runtime's and the node's answers (no I/O beyond the store)."""
    store = Store.open_readonly(root_dir / "store")
    try:
        facts = _from_store(store, root_dir)
    finally:
        store.close_sync()
    run: dict[str, Any] = facts.pop("_run")
    endpoint = run.get("runtimeEndpoint") or RuntimeSettings().endpoint
    from vnode.security.certs import status_lines

    first = {
        "rootDir": facts.pop("rootDir"),
        "node": facts.pop("node"),
        "cluster": facts.pop("cluster"),
        "vnode": _process(root_dir, run, probe),
        "link": facts.pop("link"),
        "runtime": _runtime(endpoint) if probe else {"endpoint": endpoint},
    }
    return {**first, **facts, "certificates": status_lines(root_dir)}


def _from_store(store: Store, root_dir: Path) -> dict[str, Any]:
    info = store.info()
    owner: dict[str, Any] = store.get(layout.META, "owner") or {}
    run: dict[str, Any] = store.get(layout.META, layout.META_RUN) or {}
    link: layout.LinkState = store.get(layout.LINK, layout.LINK_STATE) or layout.LinkState()
    node_object = store.get(layout.LINK, layout.LINK_NODE) or {}
    name = owner.get("node") or run.get("node") or (node_object.get("metadata") or {}).get("name")
    if link.get("offlineSince"):
        link_state = "offline"
    elif link.get("activeMaster"):
        link_state = "online"
    else:
        link_state = "unknown" if owner else "standalone"
    waiting = [key for key, _ in store.items(layout.EVENTS) if key != layout.EVENTS_DROPPED]
    return {
        "rootDir": str(root_dir),
        "node": name,
        "cluster": {"caHash": owner["caHash"]} if owner else None,
        "store": {"path": str(store.path), "usedBytes": info["used"], "mapSizeBytes": info["map_size"]},
        "link": {
            "state": link_state,
            "activeMaster": link.get("activeMaster"),
            "offlineSince": link.get("offlineSince"),
        },
        "pods": _pods(store),
        "warnings": _warnings(store),
        "events": {"waiting": len(waiting), "dropped": store.get(layout.EVENTS, layout.EVENTS_DROPPED) or 0},
        "offlineCache": dict(
            sorted(Counter(key.split("/", 1)[0] for key, _ in store.items(layout.OBJECTS)).items())
        ),
        "mqtt": _mqtt(store),
        "_run": run,  # gather's, for the probes
    }


def _pods(store: Store) -> dict[str, Any]:
    states: dict[str, layout.PodState] = dict(store.items(layout.PODSTATE))
    items, failing = [], []
    records: list[tuple[str, layout.PodRecord]] = store.items(layout.PODS)
    for uid, record in records:
        meta = record["pod"]["metadata"]
        state = states.get(uid)
        status = (state.get("status") if state is not None else None) or {}
        item = {
            "namespace": meta.get("namespace", "default"),
            "name": meta["name"],
            "uid": uid,
            "phase": status.get("phase", "Pending"),
            "reason": _reason(status),
            "source": record["source"],
        }
        items.append(item)
        problem = state.get("problem") if state is not None else None
        if problem:
            failing.append({"namespace": item["namespace"], "name": item["name"], **problem})
    items.sort(key=lambda i: (str(i["namespace"]), str(i["name"])))
    phases = Counter(str(i["phase"]) for i in items)
    return {
        "total": len(items),
        "byPhase": dict(sorted(phases.items())),
        "syncFailing": failing,
        "items": items,
    }


def _reason(status: dict[str, Any]) -> str | None:
    """Why the pod is not simply running: the pod's reason (``Evicted``), else the first
    container's waiting reason (``ImagePullBackOff``, ``CrashLoopBackOff``, ``CreateContainerError``)."""
    if status.get("reason"):
        return str(status["reason"])
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason"):
                return str(waiting["reason"])
    return None


def _warnings(store: Store) -> list[dict[str, Any]]:
    """The last Warning Events the node recorded (the local API's event log), oldest first."""
    rows: list[layout.StoredEvent] = [
        e for _, e in store.items(layout.EVENTLOG) if e.get("type") == "Warning"
    ]
    keys = ("kind", "namespace", "name", "reason", "message")
    return [{"time": _rfc3339(e.get("time")), **{k: e.get(k) for k in keys}} for e in rows[-WARNINGS_SHOWN:]]


def _rfc3339(stamp: Any) -> Any:
    """The event log's ISO time (microseconds, +00:00) as Kubernetes writes times: seconds, Z."""
    try:
        return datetime.fromisoformat(str(stamp)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return stamp


def _mqtt(store: Store) -> dict[str, Any]:
    devices = []
    for device_id, device in store.items(layout.DEVICE_TWINS):
        twins = {
            key: {
                "actual": (t.get("actual") or {}).get("value"),
                "expected": (t.get("expected") or {}).get("value"),
            }
            for key, t in sorted((device.get("twin") or {}).items())
        }
        devices.append({"id": device_id, "state": device.get("state") or "unknown", "twins": twins})
    sessions: list[tuple[str, layout.MqttSession]] = store.items(layout.MQTT_SESSIONS)
    return {
        "sessions": len(sessions),
        "queued": sum(len(session.get("queue") or []) for _, session in sessions),
        "retained": len(store.items(layout.MQTT_RETAINED)),
        "outbox": len(store.items(layout.MQTT_OUTBOX)),
        "devices": devices,
    }


def lock_holder(root_dir: Path) -> int | None:
    """The pid holding the root dir's lock (a running vnode), read from ``/proc/locks`` so that
    asking never takes the lock a starting vnode may want at that moment."""
    try:
        st = (root_dir / LOCK_FILE).stat()
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:2f:5678 0 EOF"; waiters carry "->" and are skipped
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            return int(fields[4])
    return None


def _process(root_dir: Path, run: dict[str, Any], probe: bool) -> dict[str, Any]:
    """Whether a vnode runs on this root dir (and answers), else what the last run recorded. A
    record of another pid than the lock holder's is an earlier run's: the holder is starting."""
    pid = lock_holder(root_dir)
    if pid is not None and run.get("pid") != pid:
        run = {}
    facts: dict[str, Any] = {
        "running": pid is not None,
        "pid": pid if pid is not None else run.get("pid"),
        "version": run.get("version"),
        "started": run.get("started"),
        "stopped": None if pid is not None else run.get("stopped"),
        "healthz": None,
    }
    url = run.get("healthz")
    if pid is not None and url and probe:
        facts["healthz"] = {"url": url, **_healthz(url)}
    return facts


def _healthz(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as answer:
            return {"ok": True, "answer": answer.read(200).decode(errors="replace").strip()}
    except urllib.error.HTTPError as exc:  # 500 with the failed checks
        return {"ok": False, "answer": exc.read(500).decode(errors="replace").strip()}
    except (OSError, ValueError) as exc:
        return {"ok": False, "answer": f"no answer: {getattr(exc, 'reason', exc)}"}


def _runtime(endpoint: str) -> dict[str, Any]:
    async def ask() -> str:
        from vnode.runtime.cri import CriClient

        client = CriClient(endpoint, timeout=PROBE_TIMEOUT)
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await client.version()
            return client.runtime_version
        finally:
            await client.close()

    try:
        version = asyncio.run(ask())
    except (errors.VnodeError, TimeoutError) as exc:
        return {"endpoint": endpoint, "answers": False, "version": None, "error": str(exc) or "timed out"}
    return {"endpoint": endpoint, "answers": True, "version": version, "error": None}


def render(facts: dict[str, Any]) -> str:
    """The readable summary of ``gather``'s facts, one topic a line, the problems last."""
    lines = [_node_line(facts)]
    link = facts["link"]
    if link["state"] == "offline":
        lines.append(f"control plane: unreachable, running offline since {link['offlineSince']}")
    elif link["state"] == "online":
        lines.append(f"control plane: reachable at the last heartbeat, through {link['activeMaster']}")
    elif link["state"] == "standalone":
        lines.append("control plane: none (standalone)")
    runtime = facts["runtime"]
    if "answers" in runtime:
        answer = (
            f"answers ({runtime['version']})"
            if runtime["answers"]
            else f"does not answer: {runtime['error']}"
        )
        lines.append(f"runtime: {runtime['endpoint']} {answer}")
    store = facts["store"]
    lines.append(f"store {store['path']}: {store['usedBytes']} of {store['mapSizeBytes']} bytes used")
    if facts["cluster"]:
        lines.append(
            f"cache of node {facts['node']} in the cluster with CA sha256:{facts['cluster']['caHash']}"
        )
    events = facts["events"]
    if events["waiting"] or events["dropped"]:
        lines.append(f"events waiting to be posted: {events['waiting']} ({events['dropped']} dropped)")
    lines += facts["certificates"]
    lines += _mqtt_lines(facts["mqtt"])
    if facts["offlineCache"]:
        lines.append(
            "offline cache: " + ", ".join(f"{n} {kind}" for kind, n in facts["offlineCache"].items())
        )
    pods = facts["pods"]
    phases = ", ".join(f"{n} {phase}" for phase, n in pods["byPhase"].items())
    lines.append(f"pods: {pods['total']}" + (f" ({phases})" if phases else ""))
    failing = {(p["namespace"], p["name"]): p for p in pods["syncFailing"]}
    for pod in pods["items"]:
        line = f"  {pod['namespace']}/{pod['name']}\t{pod['phase']}\t{pod['source']}"
        if pod["reason"]:
            line += f"\t{pod['reason']}"
        problem = failing.get((pod["namespace"], pod["name"]))
        if problem:
            line += f"\tsync failing since {problem['since']}: {problem['message']}"
        lines.append(line)
    if facts["warnings"]:
        lines.append(f"last Warning events (newest last, at most {WARNINGS_SHOWN}):")
        for e in facts["warnings"]:
            lines.append(f"  {e['time']}\t{e['namespace']}/{e['name']}\t{e['reason']}: {e['message']}")
    return "\n".join(lines) + "\n"


def _node_line(facts: dict[str, Any]) -> str:
    vnode = facts["vnode"]
    head = f"node {facts['node'] or '(unnamed)'}: "
    if vnode["running"] and vnode["started"] is None:
        return f"{head}vnode starting (pid {vnode['pid']})"
    if vnode["running"]:
        line = f"{head}vnode {vnode['version']} running (pid {vnode['pid']}, since {vnode['started']})"
        healthz = vnode["healthz"]
        if healthz is not None:
            line += ", /healthz " + (
                "ok" if healthz["ok"] else f"failing: {' '.join(healthz['answer'].split())}"
            )
        return line
    if vnode["pid"] is None:
        return f"{head}vnode not running"
    until = f" until {vnode['stopped']}" if vnode["stopped"] else " (not stopped cleanly)"
    return f"{head}vnode not running (last run: pid {vnode['pid']} from {vnode['started']}{until})"


def _mqtt_lines(mqtt: dict[str, Any]) -> list[str]:
    """MQTT's state: persistent sessions, retained messages, the external broker's outbox, and the
    devices with their state and twins."""
    lines = []
    if mqtt["sessions"] or mqtt["retained"] or mqtt["outbox"]:
        lines.append(
            f"mqtt: {mqtt['sessions']} persistent session(s), {mqtt['retained']} retained message(s), "
            f"{mqtt['outbox']} waiting for the external broker; {mqtt['queued']} queued for "
            "persistent sessions' clients"
        )
    for device in mqtt["devices"]:
        twins = ", ".join(
            f"{key}={_or_dash(t['actual'])}/{_or_dash(t['expected'])}" for key, t in device["twins"].items()
        )
        lines.append(f"device {device['id']}\t{device['state']}\t{twins or 'no twins'} (actual/expected)")
    return lines


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)
