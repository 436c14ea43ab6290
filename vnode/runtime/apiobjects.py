"""What pods take from API objects: configMap and secret volumes, env and envFrom.

Pure functions over already-fetched objects (``Objects``: (kind, name) -> object or None when it
does not exist), so the rules are unit-testable and the runtime never talks to the API server:
the worker fetches through the ``ObjectSource`` protocol it is given (a TTL cache over the API in
cluster mode, nothing standalone). Missing required objects or keys raise ``InvalidInput`` with
kubelet's messages; ``optional: true`` references are skipped instead.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from vnode import errors

Objects = dict[tuple[str, str], dict[str, Any] | None]
CONFIGMAPS = "configmaps"
SECRETS = "secrets"
_KINDS = {"configMap": CONFIGMAPS, "secret": SECRETS}
_TITLES = {CONFIGMAPS: ("configmap", "ConfigMap"), SECRETS: ("secret", "Secret")}


def references(pod: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (kind, name) the pod's volumes, env and envFrom refer to."""
    refs: set[tuple[str, str]] = set()
    spec = pod.get("spec") or {}
    for volume in spec.get("volumes") or []:
        if "configMap" in volume:
            refs.add((CONFIGMAPS, str((volume["configMap"] or {}).get("name", ""))))
        if "secret" in volume:
            refs.add((SECRETS, str((volume["secret"] or {}).get("secretName", ""))))
        for part in (volume.get("projected") or {}).get("sources") or []:
            if "configMap" in part:
                refs.add((CONFIGMAPS, str((part["configMap"] or {}).get("name", ""))))
            if "secret" in part:
                refs.add((SECRETS, str((part["secret"] or {}).get("name", ""))))
    for ref in spec.get("imagePullSecrets") or []:
        refs.add((SECRETS, str(ref.get("name", ""))))
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for source in container.get("envFrom") or []:
            if "configMapRef" in source:
                refs.add((CONFIGMAPS, str(source["configMapRef"].get("name", ""))))
            if "secretRef" in source:
                refs.add((SECRETS, str(source["secretRef"].get("name", ""))))
        for item in container.get("env") or []:
            source = item.get("valueFrom") or {}
            if "configMapKeyRef" in source:
                refs.add((CONFIGMAPS, str(source["configMapKeyRef"].get("name", ""))))
            if "secretKeyRef" in source:
                refs.add((SECRETS, str(source["secretKeyRef"].get("name", ""))))
    return refs


def data_of(kind: str, obj: dict[str, Any]) -> dict[str, bytes]:
    """An object's keys and values as bytes (secret data is base64 in the API)."""
    if kind == SECRETS:
        out = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        out.update({k: str(v).encode() for k, v in (obj.get("stringData") or {}).items()})
        return out
    out = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return out


def _lookup(
    objects: Objects, kind: str, name: str, namespace: str, optional: bool
) -> dict[str, bytes] | None:
    obj = objects.get((kind, name))
    if obj is None:
        if optional:
            return None
        raise errors.InvalidInput(f'{_TITLES[kind][0]} "{name}" not found')
    return data_of(kind, obj)


def env_from_objects(container: dict[str, Any], namespace: str, objects: Objects) -> dict[str, str]:
    """``envFrom`` then the ``configMapKeyRef``/``secretKeyRef`` entries of ``env``, in kubelet's order."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        for field, kind in (("configMapRef", CONFIGMAPS), ("secretRef", SECRETS)):
            if field not in source:
                continue
            ref = source[field]
            data = _lookup(objects, kind, str(ref.get("name", "")), namespace, bool(ref.get("optional")))
            prefix = str(source.get("prefix", ""))
            for key, value in (data or {}).items():
                env[prefix + key] = value.decode(errors="replace")
    return env


def key_ref(source: dict[str, Any], namespace: str, objects: Objects) -> str | None:
    """The value of a ``configMapKeyRef``/``secretKeyRef``; None when optional and absent."""
    for field, kind in (("configMapKeyRef", CONFIGMAPS), ("secretKeyRef", SECRETS)):
        if field not in source:
            continue
        ref = source[field]
        name, key, optional = str(ref.get("name", "")), str(ref.get("key", "")), bool(ref.get("optional"))
        data = _lookup(objects, kind, name, namespace, optional)
        if data is None:
            return None
        if key not in data:
            if optional:
                return None
            raise errors.InvalidInput(f"couldn't find key {key} in {_TITLES[kind][1]} {namespace}/{name}")
        return data[key].decode(errors="replace")
    raise errors.InvalidInput(f"unsupported env source {sorted(source)}")


Tokens = dict[tuple[str, int], str]  # (audience, expirationSeconds) -> service-account token
FieldValue = Callable[[dict[str, Any]], str]  # a downwardAPI item (fieldRef/resourceFieldRef) -> value
API_VOLUME_KINDS = ("configMap", "secret", "projected", "downwardAPI")
DEFAULT_TOKEN_SECONDS = 3600


def token_requests(pod: dict[str, Any]) -> set[tuple[str, int]]:
    """(audience, expirationSeconds) of every serviceAccountToken projection of the pod."""
    wanted = set()
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        for source in (volume.get("projected") or {}).get("sources") or []:
            token = source.get("serviceAccountToken")
            if token is not None:
                wanted.add(
                    (
                        str(token.get("audience", "")),
                        int(token.get("expirationSeconds", DEFAULT_TOKEN_SECONDS)),
                    )
                )
    return wanted


def _object_files(
    kind: str, source: dict[str, Any], namespace: str, objects: Objects, mode: int
) -> dict[str, tuple[bytes, int]]:
    name = str(source.get("name" if kind == CONFIGMAPS else "secretName", source.get("name", "")))
    data = _lookup(objects, kind, name, namespace, bool(source.get("optional")))
    if data is None:
        return {}
    items = source.get("items")
    if not items:
        return {_safe(key): (value, mode) for key, value in data.items()}
    files = {}
    for item in items:
        key = str(item.get("key", ""))
        if key not in data:
            if source.get("optional"):
                continue
            raise errors.InvalidInput(
                f"configmap references non-existent config key: {key}"
                if kind == CONFIGMAPS
                else f"references non-existent secret key: {key}"
            )
        files[_safe(str(item.get("path", key)))] = (data[key], int(item.get("mode", mode)))
    return files


def _downward_files(source: dict[str, Any], field: FieldValue, mode: int) -> dict[str, tuple[bytes, int]]:
    return {
        _safe(str(item["path"])): (field(item).encode(), int(item.get("mode", mode)))
        for item in source.get("items") or []
    }


def volume_files(
    pod: dict[str, Any], objects: Objects, tokens: Tokens | None = None, field: FieldValue | None = None
) -> dict[str, dict[str, tuple[bytes, int]]]:
    """configMap, secret, downwardAPI and projected volumes as {volume: {path: (content, mode)}}."""
    namespace = (pod.get("metadata") or {}).get("namespace", "default")
    result: dict[str, dict[str, tuple[bytes, int]]] = {}
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        kind_field = next((f for f in API_VOLUME_KINDS if f in volume), None)
        if kind_field is None:
            continue
        source = volume[kind_field] or {}
        mode = int(source.get("defaultMode", 0o644))
        files: dict[str, tuple[bytes, int]] = {}
        if kind_field in _KINDS:
            files = _object_files(_KINDS[kind_field], source, namespace, objects, mode)
        elif kind_field == "downwardAPI":
            files = _downward_files(source, _need(field), mode)
        else:
            for part in source.get("sources") or []:
                if "configMap" in part:
                    files.update(_object_files(CONFIGMAPS, part["configMap"] or {}, namespace, objects, mode))
                elif "secret" in part:
                    files.update(_object_files(SECRETS, part["secret"] or {}, namespace, objects, mode))
                elif "downwardAPI" in part:
                    files.update(_downward_files(part["downwardAPI"] or {}, _need(field), mode))
                elif "serviceAccountToken" in part:
                    token = part["serviceAccountToken"] or {}
                    key = (
                        str(token.get("audience", "")),
                        int(token.get("expirationSeconds", DEFAULT_TOKEN_SECONDS)),
                    )
                    if tokens is None or key not in tokens:
                        raise errors.InvalidInput("service account token not available yet")
                    files[_safe(str(token.get("path", "token")))] = (tokens[key].encode(), mode)
        result[volume["name"]] = files
    return result


def _need(field: FieldValue | None) -> FieldValue:
    if field is None:
        raise errors.InvalidInput("downwardAPI values are not available here")
    return field


def _safe(path: str) -> str:
    if not path or path.startswith("/") or ".." in path.split("/"):
        raise errors.InvalidInput(f"volume item path {path!r} must be relative and must not contain '..'")
    return path


def _registry(server: str) -> str:
    host = server.split("://", 1)[-1].split("/", 1)[0]
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host


def pull_auth(pod: dict[str, Any], image: str, objects: Objects) -> dict[str, str] | None:
    """Registry credentials for ``image`` (a normalised reference) from the pod's imagePullSecrets
    (``kubernetes.io/dockerconfigjson`` or the older ``dockercfg``), as CRI ``AuthConfig`` fields.
    Missing or malformed secrets are skipped, as kubelet skips them."""
    registry = image.split("/", 1)[0]
    for ref in (pod.get("spec") or {}).get("imagePullSecrets") or []:
        secret = objects.get((SECRETS, str(ref.get("name", ""))))
        if secret is None:
            continue
        data = data_of(SECRETS, secret)
        try:
            if ".dockerconfigjson" in data:
                auths = json.loads(data[".dockerconfigjson"]).get("auths") or {}
            elif ".dockercfg" in data:
                auths = json.loads(data[".dockercfg"])
            else:
                continue
        except ValueError:
            continue
        for server, entry in auths.items():
            if _registry(server) != registry or not isinstance(entry, dict):
                continue
            auth = {"server_address": registry}
            user, password = entry.get("username"), entry.get("password")
            if (not user or not password) and entry.get("auth"):
                decoded = base64.b64decode(entry["auth"]).decode(errors="replace")
                user, _, password = decoded.partition(":")
            if user:
                auth["username"], auth["password"] = str(user), str(password or "")
            if entry.get("identitytoken"):
                auth["identity_token"] = str(entry["identitytoken"])
            return auth
    return None
