"""The parsers of config values: one per kind of value (port, duration, IP, labels, taints,
thresholds ...). Each takes the raw value and the config file's directory (for relative paths) and
raises ``Bad`` with the reason; the loader adds which field or flag it was."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vnode import errors
from vnode.kube import thresholds, tls
from vnode.kube.quantity import to_bytes

LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
LEVELS = ("debug", "info", "warning", "error")


class Bad(Exception):
    """A value's problem, without its location (the loader adds the path or flag)."""


# -- value parsers: each takes (value, base dir for relative paths) ---------------------------


def int_range(lo: int, hi: int) -> Callable[[Any, Path], int]:
    def parse(value: Any, base: Path) -> int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise Bad(f"expected an integer, got {value!r}")
        if not lo <= value <= hi:
            raise Bad(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def parse_duration(value: Any, base: Path = Path()) -> float:
    """Go duration text (``1m30s``, ``500ms``) or a number of seconds; must be positive."""
    if isinstance(value, bool):
        raise Bad(f"expected a duration like 20s or 1m30s, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        if not text or DURATION.sub("", text) != "":
            raise Bad(f"expected a duration like 20s or 1m30s, got {value!r}")
        seconds = sum(float(n) * UNITS[u] for n, u in DURATION.findall(text))
    if not math.isfinite(seconds):
        raise Bad(f"expected a finite duration, got {value!r}")
    if seconds <= 0:
        raise Bad(f"must be a positive duration, got {value!r}")
    return seconds


def map_size(value: Any, base: Path) -> int:
    try:
        size = to_bytes(value)
    except errors.InvalidInput:
        raise Bad(f"expected a size like 1Gi or 512Mi, got {value!r}") from None
    if size < 1 << 20:
        raise Bad(f"must be at least 1Mi, got {value!r}")
    return size


def ip(value: Any, base: Path) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        raise Bad(f"expected an IP address, got {value!r}") from None


def ip_list(value: Any, base: Path) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise Bad(f"expected a list of IP addresses, got {value!r}")
    return tuple(ip(v, base) for v in items if str(v).strip())


def path(value: Any, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise Bad(f"expected a path, got {value!r}")
    return (base / value).resolve() if not Path(value).is_absolute() else Path(value)


def endpoint(value: Any, base: Path) -> str:
    text = str(value).strip()
    path = text.removeprefix("unix://")
    if "://" in path or not path.startswith("/"):
        raise Bad(f"expected unix:///absolute/path/to/socket, got {value!r}")
    return "unix://" + path


def node_name(value: Any, base: Path) -> str:
    text = str(value).strip().lower()
    if not text or len(text) > 253 or not DNS_SUBDOMAIN.match(text):
        raise Bad(f"{value!r} is not a valid node name (a DNS-1123 subdomain)")
    return text


def labels(value: Any, base: Path) -> dict[str, str]:
    if isinstance(value, str):
        pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise Bad(f"expected key=value pairs separated by commas, got {value!r}")
        value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, dict):
        raise Bad(f"expected a mapping of labels, got {value!r}")
    result = {}
    for key, val in value.items():
        key, val = str(key), "" if val is None else str(val)
        prefix, _, name = key.rpartition("/")
        bad_prefix = prefix != "" and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix))
        if bad_prefix or len(name) > 63 or not LABEL_NAME.match(name):
            raise Bad(f"invalid label key {key!r}")
        if len(val) > 63 or not LABEL_VALUE.match(val):
            raise Bad(f"invalid value {val!r} for label {key!r}")
        if restricted_label(prefix, key):
            raise Bad(
                f"{key!r}: a node may set only kubelet.kubernetes.io/*, node.kubernetes.io/* and the "
                "well-known labels in the kubernetes.io and k8s.io namespaces (the API server's "
                "NodeRestriction refuses the others); an admin sets it with kubectl label node"
            )
        result[key] = val
    return result


# What NodeRestriction lets a node set in the kubernetes.io and k8s.io namespaces (kubelet's list).
KUBELET_LABELS = frozenset({
    "kubernetes.io/hostname", "kubernetes.io/os", "kubernetes.io/arch", "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch", "topology.kubernetes.io/zone", "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type", "node.kubernetes.io/instance-type",
})  # fmt: skip
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")


def restricted_label(prefix: str, key: str) -> bool:
    """Whether ``key`` is in a namespace NodeRestriction keeps from nodes, as kubelet checks it."""
    if key in KUBELET_LABELS:
        return False
    if any(prefix == ns or prefix.endswith("." + ns) for ns in KUBELET_LABEL_NAMESPACES):
        return False
    return any(prefix == ns or prefix.endswith("." + ns) for ns in ("kubernetes.io", "k8s.io"))


def boolean(value: Any, base: Path) -> bool:
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise Bad(f"expected true or false, got {value!r}")
    return text == "true"


def choice(*choices: str) -> Callable[[Any, Path], str]:
    def parse(value: Any, base: Path) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise Bad(f"must be one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


def choice_exact(*choices: str) -> Callable[[Any, Path], str]:
    def parse(value: Any, base: Path) -> str:
        text = str(value).strip()
        if text not in choices:
            raise Bad(f"must be one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


def domain(value: Any, base: Path) -> str:
    text = str(value).strip().rstrip(".")
    if not DNS_SUBDOMAIN.match(text):
        raise Bad(f"{value!r} is not a valid DNS domain")
    return text


def masters(value: Any, base: Path) -> str:
    urls = [u.strip() for u in str(value).split(",") if u.strip()]
    if not urls:
        raise Bad("expected one or more http(s):// URLs separated by commas")
    for url in urls:
        if not re.match(r"^https?://[^/\s]+(/.*)?$", url):
            raise Bad(f"{url!r} is not an http:// or https:// URL")
    return ",".join(u.rstrip("/") for u in urls)


TAINT = re.compile(r"^([^=:\s]+)(?:=([^:\s]*))?:(NoSchedule|PreferNoSchedule|NoExecute)$")


def taints(value: Any, base: Path) -> tuple[dict[str, str], ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise Bad(f"expected key=value:Effect entries, got {value!r}")
    taints = []
    for item in items:
        match = TAINT.match(str(item).strip())
        if not match:
            raise Bad(f"{item!r} is not key[=value]:NoSchedule|PreferNoSchedule|NoExecute")
        taint = {"key": match.group(1), "effect": match.group(3)}
        if match.group(2):
            taint["value"] = match.group(2)
        taints.append(taint)
    return tuple(taints)


def ttl(value: Any, base: Path) -> float:
    """A duration that may be zero (``0`` or ``0s``: off)."""
    if str(value).strip() in ("0", "0s", "0.0"):
        return 0.0
    return parse_duration(value, base)


def tls_version(value: Any, base: Path) -> str:
    try:
        return tls.parse_min_version(str(value).strip())
    except ValueError as exc:
        raise Bad(str(exc)) from None


def cipher_suites(value: Any, base: Path) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise Bad(f"expected a list of cipher suite names, got {value!r}")
    try:
        return tls.parse_cipher_suites([str(v).strip() for v in items if str(v).strip()])
    except ValueError as exc:
        raise Bad(str(exc)) from None


def eviction_thresholds(value: Any, base: Path) -> tuple[thresholds.Threshold, ...]:
    try:
        return thresholds.parse_thresholds(joined(value))
    except errors.InvalidInput as exc:
        raise Bad(str(exc)) from None


def grace_periods(value: Any, base: Path) -> dict[str, float]:
    if isinstance(value, dict):
        value = ",".join(f"{k}={v}" for k, v in value.items())
    try:
        return thresholds.parse_grace_periods(joined(value), lambda text: parse_duration(text))
    except errors.InvalidInput as exc:
        raise Bad(str(exc)) from None


def reserved(value: Any, base: Path) -> dict[str, int]:
    try:
        return thresholds.parse_reserved(joined(value))
    except errors.InvalidInput as exc:
        raise Bad(str(exc)) from None


def joined(value: Any) -> str:
    """``a<1,b<2`` as a flag, or as the file's mapping ``{a: 1, b: 2}`` / list (kubelet's config)."""
    if isinstance(value, dict):
        sep = "=" if all(k in thresholds.RESERVABLE for k in value) else "<"
        return ",".join(f"{k}{sep}{v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, str):
        return value
    raise Bad(f"expected a comma-separated list or a mapping, got {value!r}")


def mqtt_server(value: Any, base: Path) -> str:
    """``tcp://host:port`` or ``ssl://host:port`` (edgecore's form)."""
    text = str(value).strip()
    match = re.match(r"^(tcp|ssl)://(\[[0-9a-fA-F:.]+\]|[^:/\s\[\]]+):(\d{1,5})$", text)
    if not match or not 0 < int(match.group(3)) <= 65535:
        raise Bad(f"expected tcp://host:port or ssl://host:port, got {value!r}")
    return text


def mqtt_mode(value: Any, base: Path) -> int:
    try:
        return int_range(0, 2)(value, base)
    except Bad:
        raise Bad(f"must be 0 (internal), 1 (both) or 2 (external), got {value!r}") from None


def text(value: Any, base: Path) -> str:
    if value is None:
        return ""
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise Bad(f"expected a string, got {value!r}")
    return str(value)
