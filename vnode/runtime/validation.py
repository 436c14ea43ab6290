"""Admission checks of a pod spec before any runtime call: a bad pod gets a status, not a crash.

The API server validates pods it stores; static pods and, after an outage, cached pods reach vnode
without that, so the worker checks what it relies on itself. Every problem is reported with the
field path, the way API validation errors read (``spec.containers[0].name: Invalid value: ...``).
The pod worker turns a non-empty list into phase Failed, reason ``InvalidPod`` and an Event.
"""

from __future__ import annotations

import re
from typing import Any

from vnode import errors
from vnode.kube.quantity import parse_quantity
from vnode.probes.spec import problems as probe_problems

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
SUPPORTED_VOLUMES = ("emptyDir", "hostPath")
RESOLVED_VOLUMES = (
    "configMap",
    "secret",
    "projected",
    "downwardAPI",
)  # what this node resolves when it has an API server
API_VOLUMES = (
    "configMap",
    "secret",
    "projected",
    "downwardAPI",
    "persistentVolumeClaim",
    "serviceAccountToken",
)
FIELD_PATHS = (
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.podIP",
    "status.podIPs",
    "status.hostIP",
    "status.hostIPs",
)
FIELD_PATH_PREFIXES = ("metadata.labels['", "metadata.annotations['")
HOST_PATH_TYPES = (
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
)
PROTOCOLS = ("TCP", "UDP", "SCTP")


def validate_pod(pod: dict[str, Any], *, api: bool = False) -> list[str]:
    """Every problem found in ``pod``, each as ``field.path: message``; empty when it is fine.

    ``api``: the node is connected to a control plane, so configMap and secret references can be
    resolved."""
    problems: list[str] = []
    meta = pod.get("metadata") or {}
    spec = pod.get("spec")
    _name(problems, "metadata.name", meta.get("name"), DNS1123_SUBDOMAIN, 253)
    _name(problems, "metadata.namespace", meta.get("namespace", "default"), DNS1123_LABEL, 63)
    if not isinstance(spec, dict):
        return [*problems, "spec: Required value"]
    if spec.get("restartPolicy", "Always") not in ("Always", "OnFailure", "Never"):
        problems.append(f"spec.restartPolicy: Unsupported value: {spec.get('restartPolicy')!r}")
    volumes = _volumes(problems, spec.get("volumes") or [], api)
    containers = spec.get("containers") or []
    if not containers:
        problems.append("spec.containers: Required value")
    seen: set[str] = set()
    host_ports: set[tuple[int, str]] = set()
    for field, items in (
        ("spec.initContainers", spec.get("initContainers") or []),
        ("spec.containers", containers),
    ):
        if not isinstance(items, list):
            problems.append(f"{field}: must be a list")
            continue
        for i, container in enumerate(items):
            _container(problems, f"{field}[{i}]", container, seen, volumes, host_ports, api)
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool) or grace < 0):
        problems.append(f"spec.terminationGracePeriodSeconds: Invalid value: {grace!r}: must be >= 0")
    return problems


def _name(problems: list[str], path: str, value: Any, pattern: re.Pattern[str], limit: int) -> None:
    if not value:
        problems.append(f"{path}: Required value")
    elif not isinstance(value, str) or len(value) > limit or not pattern.match(value):
        problems.append(
            f"{path}: Invalid value: {value!r}: must be no more than {limit} characters of lower case "
            "alphanumerics, '-' (and '.' for names), starting and ending with an alphanumeric"
        )


def _named_item(problems: list[str], path: str, item: Any, seen: set[str]) -> bool:
    """Checks an entry of a named list (volumes, containers): an object, a valid unique name."""
    if not isinstance(item, dict):
        problems.append(f"{path}: must be an object")
        return False
    name = item.get("name")
    _name(problems, f"{path}.name", name, DNS1123_LABEL, 63)
    if name in seen:
        problems.append(f"{path}.name: Duplicate value: {name!r}")
    seen.add(str(name))
    return True


def _volumes(problems: list[str], volumes: Any, api: bool) -> set[str]:
    names: set[str] = set()
    if not isinstance(volumes, list):
        problems.append("spec.volumes: must be a list")
        return names
    for i, volume in enumerate(volumes):
        path = f"spec.volumes[{i}]"
        if not _named_item(problems, path, volume, names):
            continue
        kinds = [k for k in volume if k != "name"]
        if len(kinds) != 1:
            problems.append(f"{path}: must specify exactly one volume type, got {kinds or 'none'}")
            continue
        kind = kinds[0]
        if api and kind in RESOLVED_VOLUMES:
            continue
        if kind in API_VOLUMES:
            problems.append(f"{path}.{kind}: needs the API server, which this node is not connected to")
        elif kind not in SUPPORTED_VOLUMES:
            problems.append(f"{path}.{kind}: volume type not supported by this node")
        elif kind == "hostPath":
            source = volume["hostPath"] or {}
            if not str(source.get("path", "")).startswith("/"):
                problems.append(f"{path}.hostPath.path: Invalid value: must be an absolute path")
            if source.get("type", "") not in HOST_PATH_TYPES:
                problems.append(f"{path}.hostPath.type: Unsupported value: {source.get('type')!r}")
        elif kind == "emptyDir":
            source = volume["emptyDir"] or {}
            if source.get("medium", "") not in ("", "Memory"):
                problems.append(f"{path}.emptyDir.medium: Unsupported value: {source.get('medium')!r}")
            if source.get("sizeLimit") is not None:
                _quantity(problems, f"{path}.emptyDir.sizeLimit", source["sizeLimit"])
    return names


def _container(
    problems: list[str],
    path: str,
    container: Any,
    seen: set[str],
    volumes: set[str],
    host_ports: set[tuple[int, str]],
    api: bool,
) -> None:
    if not _named_item(problems, path, container, seen):
        return
    if not isinstance(container.get("image"), str) or not container["image"].strip():
        problems.append(f"{path}.image: Required value")
    if container.get("imagePullPolicy", "IfNotPresent") not in ("Always", "IfNotPresent", "Never"):
        problems.append(f"{path}.imagePullPolicy: Unsupported value: {container.get('imagePullPolicy')!r}")
    for key in ("command", "args"):
        value = container.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            problems.append(f"{path}.{key}: must be a list of strings")
    for j, env in enumerate(container.get("env") or []):
        _env(problems, f"{path}.env[{j}]", env, api)
    for j, mount in enumerate(container.get("volumeMounts") or []):
        mpath = f"{path}.volumeMounts[{j}]"
        if mount.get("name") not in volumes:
            problems.append(f"{mpath}.name: Not found: {mount.get('name')!r}")
        if not str(mount.get("mountPath", "")).startswith("/"):
            problems.append(f"{mpath}.mountPath: Invalid value: must be an absolute path")
    for j, port in enumerate(container.get("ports") or []):
        _port(problems, f"{path}.ports[{j}]", port, host_ports)
    problems.extend(probe_problems(container, path))
    resources = container.get("resources") or {}
    values: dict[str, dict[str, Any]] = {}
    for kind in ("requests", "limits"):
        for resource, quantity in (resources.get(kind) or {}).items():
            parsed = _quantity(problems, f"{path}.resources.{kind}[{resource}]", quantity)
            if parsed is not None:
                values.setdefault(resource, {})[kind] = parsed
    for resource, pair in values.items():
        if "requests" in pair and "limits" in pair and pair["requests"] > pair["limits"]:
            problems.append(
                f"{path}.resources.requests[{resource}]: Invalid value: "
                "must be less than or equal to the limit"
            )


def _env(problems: list[str], path: str, env: Any, api: bool) -> None:
    if not isinstance(env, dict) or not isinstance(env.get("name"), str) or not ENV_NAME.match(env["name"]):
        problems.append(f"{path}.name: Invalid value: a valid environment variable name is required")
        return
    source = env.get("valueFrom")
    if source is None:
        return
    field_ref = source.get("fieldRef") if isinstance(source, dict) else None
    if field_ref is not None:
        field = str(field_ref.get("fieldPath", ""))
        if field not in FIELD_PATHS and not (field.startswith(FIELD_PATH_PREFIXES) and field.endswith("']")):
            problems.append(f"{path}.valueFrom.fieldRef.fieldPath: Unsupported value: {field!r}")
    elif isinstance(source, dict) and "resourceFieldRef" in source:
        return
    elif isinstance(source, dict) and ("configMapKeyRef" in source or "secretKeyRef" in source):
        if api:
            return
        problems.append(f"{path}.valueFrom: needs the API server, which this node is not connected to")
    else:
        problems.append(f"{path}.valueFrom: must specify one of fieldRef, resourceFieldRef")


def _port(problems: list[str], path: str, port: Any, host_ports: set[tuple[int, str]]) -> None:
    if not isinstance(port, dict):
        problems.append(f"{path}: must be an object")
        return
    for key in ("containerPort", "hostPort"):
        value = port.get(key)
        if value is None and key == "hostPort":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            problems.append(f"{path}.{key}: Invalid value: {value!r}: must be between 1 and 65535, inclusive")
    protocol = port.get("protocol", "TCP")
    if protocol not in PROTOCOLS:
        problems.append(f"{path}.protocol: Unsupported value: {protocol!r}")
    host_port = port.get("hostPort")
    if isinstance(host_port, int) and host_port:
        if (host_port, protocol) in host_ports:
            problems.append(f"{path}.hostPort: Duplicate value: '{host_port}/{protocol}'")
        host_ports.add((host_port, protocol))


def _quantity(problems: list[str], path: str, value: Any) -> Any:
    try:
        return parse_quantity(value)
    except errors.InvalidInput as exc:
        problems.append(f"{path}: Invalid value: {exc}")
        return None
