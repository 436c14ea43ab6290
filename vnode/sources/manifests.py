"""Static pods from a manifest directory (kubelet's ``--pod-manifest-path``).

Every regular file in the directory whose name does not start with a dot holds one or more pod
manifests (YAML documents or JSON). The directory is the source of truth: each scan produces the
complete set of static pods and hands it to the pod manager. Scans run when the directory changes
(inotify) and every ``file_check_frequency`` seconds anyway, because inotify can miss changes
(network filesystems, a directory created later).

Static pods are named and identified as kubelet names them: ``<name>-<node name>``, namespace
``default`` unless set, ``spec.nodeName`` the node, and a UID that is a hash of the manifest, the
node and the source, so the same manifest always yields the same UID (which is how a restarted
vnode finds its running containers again) and a changed manifest yields a new pod.

Bad input never takes pods down: a file that does not parse (half-written by an editor, say) keeps
the pods it last produced, and the problem is logged once per change; a document that is not a
pod, or has no name, is logged and skipped; a duplicate name keeps the first (by file name). A pod
that parses but fails validation is still passed on, so that it gets a Failed status and an Event.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from vnode.kube.images import default_pull_policy
from vnode.logs.inotify import DirectoryWatcher

log = logging.getLogger(__name__)

SOURCE = "file"
CONFIG_HASH = "kubernetes.io/config.hash"
CONFIG_SOURCE = "kubernetes.io/config.source"
CONFIG_SEEN = "kubernetes.io/config.seen"

_KNOWN_TOP = {"apiVersion", "kind", "metadata", "spec", "status"}
_KNOWN_META = {
    "name", "namespace", "labels", "annotations", "uid", "generateName", "ownerReferences",
    "finalizers", "creationTimestamp", "resourceVersion", "generation", "deletionTimestamp",
    "deletionGracePeriodSeconds", "managedFields", "selfLink",
}  # fmt: skip


@dataclass
class _FileResult:
    fingerprint: tuple[int, int, int]  # (mtime_ns, size, inode): reparse only when it changes
    pods: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


class ManifestSource:
    """Scans the manifest directory and reports the complete static pod set on every change."""

    def __init__(
        self,
        path: Path,
        node_name: str,
        deliver: Callable[[str, list[dict[str, Any]]], Awaitable[None]],
        *,
        check_frequency: float = 20.0,
        now: Callable[[], datetime] = lambda: datetime.now(tz=UTC),
        seen: dict[str, str] | None = None,
    ) -> None:
        """``seen``: uid -> when an earlier run first saw that manifest (its pods as the store kept
        them), so a static pod keeps its creationTimestamp, and its AGE, across restarts."""
        self.path = path
        self.node_name = node_name
        self._deliver = deliver
        self.check_frequency = check_frequency
        self._now = now
        self._files: dict[Path, _FileResult] = {}
        self._seen: dict[str, str] = dict(seen or {})  # uid -> first seen, so config.seen is stable
        self._last: list[dict[str, Any]] | None = None
        self.scans = 0

    async def run(self) -> None:
        """Scan now, then on every directory change and at least every ``check_frequency``."""
        watcher = DirectoryWatcher(self.path)
        try:
            while True:
                await self.scan()
                await watcher.wait(self.check_frequency)
                # Let a burst of writes (an editor saving, a copy) settle before reading.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        while True:
                            await watcher.wait(0.05)
        finally:
            watcher.close()

    async def scan(self) -> list[dict[str, Any]]:
        """Read the directory; deliver the pod set if it differs from the last one delivered."""
        pods = await asyncio.to_thread(self._read_all)
        self.scans += 1
        if pods != self._last:
            await self._deliver(SOURCE, pods)
            self._last = pods
        return pods

    def _read_all(self) -> list[dict[str, Any]]:
        try:
            entries = sorted(p for p in self.path.iterdir() if not p.name.startswith(".") and p.is_file())
        except FileNotFoundError:
            if self._files or self._last is None:
                log.warning("static pod path %s does not exist; no static pods", self.path)
            entries = []
        except OSError as exc:
            log.error("static pod path %s can't be read (%s); keeping the current pods", self.path, exc)
            return self._last or []
        results: dict[Path, _FileResult] = {}
        for entry in entries:
            results[entry] = self._read_file(entry)
        self._files = results
        pods: list[dict[str, Any]] = []
        names: dict[tuple[str, str], Path] = {}
        for entry, result in results.items():
            for pod in result.pods:
                key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
                if key in names:
                    log.error(
                        "manifest %s: pod %s/%s is already defined in %s; ignored as a duplicate",
                        entry, key[0], key[1], names[key],
                    )  # fmt: skip
                    continue
                names[key] = entry
                pods.append(pod)
        return pods

    def _read_file(self, path: Path) -> _FileResult:
        try:
            st = path.stat()
        except OSError as exc:
            return _FileResult((0, 0, 0), error=str(exc))
        fingerprint = (st.st_mtime_ns, st.st_size, st.st_ino)
        previous = self._files.get(path)
        if previous is not None and previous.fingerprint == fingerprint:
            return previous
        try:
            documents = parse_documents(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            message = f"manifest {path}: can't be parsed: {exc}"
            kept = previous.pods if previous is not None else []
            if previous is None or previous.error != message:
                log.error("%s; keeping the %d pod(s) it defined before", message, len(kept))
            return _FileResult(fingerprint, kept, message)
        pods = []
        for index, doc in enumerate(documents):
            where = f"manifest {path}, document {index + 1}"
            try:
                pods.append(self.static_pod(doc, where))
            except ValueError as exc:
                log.error("%s: %s; skipped", where, exc)
        return _FileResult(fingerprint, pods)

    def static_pod(self, doc: Any, where: str) -> dict[str, Any]:
        """A manifest document as the static pod kubelet would make of it."""
        if not isinstance(doc, dict):
            raise ValueError(f"expected a mapping, got {type(doc).__name__}")
        if doc.get("kind") != "Pod":
            raise ValueError(f"kind is {doc.get('kind')!r}; only Pod manifests are static pods")
        if doc.get("apiVersion") not in (None, "v1"):
            raise ValueError(f"apiVersion {doc.get('apiVersion')!r} is not v1")
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            raise ValueError("metadata.name: Required value")
        for key in sorted(set(doc) - _KNOWN_TOP):
            log.warning("%s: unknown field %r ignored", where, key)
        for key in sorted(set(meta) - _KNOWN_META):
            log.warning("%s: unknown field 'metadata.%s' ignored", where, key)
        pod = copy.deepcopy(doc)
        pod["apiVersion"] = "v1"
        pod.pop("status", None)
        meta = pod["metadata"]
        meta["name"] = f"{meta['name']}-{self.node_name}"
        meta.setdefault("namespace", "default")
        if not isinstance(pod.get("spec"), dict):
            pod["spec"] = {}
        apply_pod_defaults(pod)
        pod["spec"]["nodeName"] = self.node_name
        uid = hashlib.md5(
            json.dumps([doc, f"host:{self.node_name}", f"{SOURCE}:{self.path}"], sort_keys=True).encode(),
            usedforsecurity=False,
        ).hexdigest()
        seen = self._seen.setdefault(uid, self._now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        meta["uid"] = uid
        meta.setdefault("creationTimestamp", seen[:19] + "Z")
        annotations = meta.get("annotations")
        if not isinstance(annotations, dict):
            annotations = meta["annotations"] = {}
        annotations.update({CONFIG_HASH: uid, CONFIG_SOURCE: SOURCE, CONFIG_SEEN: seen})
        return pod


def parse_documents(text: str) -> list[Any]:
    """The documents of a manifest file: JSON if it looks like JSON, else (multi-document) YAML."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            return [json.loads(text)]
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start is not None:
            problem += f" ({context} at line {start.line + 1} column {start.column + 1})"
        raise ValueError(f"invalid YAML{where}: {problem}") from exc


def apply_pod_defaults(pod: dict[str, Any]) -> None:
    """The API server's defaults for the fields vnode reads, for pods that never went through it."""
    spec = pod["spec"]
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("enableServiceLinks", True)
    for key in ("containers", "initContainers"):
        containers = spec.get(key)
        if not isinstance(containers, list):
            continue
        for container in containers:
            if not isinstance(container, dict):
                continue
            image = container.get("image")
            if isinstance(image, str) and "imagePullPolicy" not in container:
                container["imagePullPolicy"] = default_pull_policy(image)
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
