"""Loads ``Settings`` from a YAML file and command-line flags, refusing anything doubtful.

One table (``FIELDS``) says, for every setting, its YAML path, its kubelet flag name, and how its
value is parsed and checked. The file is read first, flags override it, then every value goes
through the same parser, so an error names where the value came from: ``server.port: must be
between 0 and 65535`` for the file, ``--port: ...`` for a flag. Unknown keys are refused with a
suggestion; relative paths in the file are relative to the file's directory (so ``conf/vnode.yaml``
can say ``staticPodPath: manifests``); relative paths in flags are relative to the working dir.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from vnode import errors
from vnode.config.settings import CGROUP_DRIVERS, ON_NODE_DELETED, Settings
from vnode.kube import thresholds, tls
from vnode.kube.quantity import to_bytes

LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
LEVELS = ("debug", "info", "warning", "error")


class _Bad(Exception):
    """A value's problem, without its location (the loader adds the path or flag)."""


# -- value parsers: each takes (value, base dir for relative paths) ---------------------------


def _int(lo: int, hi: int) -> Callable[[Any, Path], int]:
    def parse(value: Any, base: Path) -> int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"expected an integer, got {value!r}")
        if not lo <= value <= hi:
            raise _Bad(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def parse_duration(value: Any, base: Path = Path()) -> float:
    """Go duration text (``1m30s``, ``500ms``) or a number of seconds; must be positive."""
    if isinstance(value, bool):
        raise _Bad(f"expected a duration like 20s or 1m30s, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        if not text or DURATION.sub("", text) != "":
            raise _Bad(f"expected a duration like 20s or 1m30s, got {value!r}")
        seconds = sum(float(n) * UNITS[u] for n, u in DURATION.findall(text))
    if not math.isfinite(seconds):
        raise _Bad(f"expected a finite duration, got {value!r}")
    if seconds <= 0:
        raise _Bad(f"must be a positive duration, got {value!r}")
    return seconds


def _map_size(value: Any, base: Path) -> int:
    try:
        size = to_bytes(value)
    except errors.InvalidInput:
        raise _Bad(f"expected a size like 1Gi or 512Mi, got {value!r}") from None
    if size < 1 << 20:
        raise _Bad(f"must be at least 1Mi, got {value!r}")
    return size


def _ip(value: Any, base: Path) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        raise _Bad(f"expected an IP address, got {value!r}") from None


def _ip_list(value: Any, base: Path) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise _Bad(f"expected a list of IP addresses, got {value!r}")
    return tuple(_ip(v, base) for v in items if str(v).strip())


def _path(value: Any, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"expected a path, got {value!r}")
    return (base / value).resolve() if not Path(value).is_absolute() else Path(value)


def _endpoint(value: Any, base: Path) -> str:
    text = str(value).strip()
    path = text.removeprefix("unix://")
    if "://" in path or not path.startswith("/"):
        raise _Bad(f"expected unix:///absolute/path/to/socket, got {value!r}")
    return "unix://" + path


def _node_name(value: Any, base: Path) -> str:
    text = str(value).strip().lower()
    if not text or len(text) > 253 or not DNS_SUBDOMAIN.match(text):
        raise _Bad(f"{value!r} is not a valid node name (a DNS-1123 subdomain)")
    return text


def _labels(value: Any, base: Path) -> dict[str, str]:
    if isinstance(value, str):
        pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise _Bad(f"expected key=value pairs separated by commas, got {value!r}")
        value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, dict):
        raise _Bad(f"expected a mapping of labels, got {value!r}")
    result = {}
    for key, val in value.items():
        key, val = str(key), "" if val is None else str(val)
        prefix, _, name = key.rpartition("/")
        bad_prefix = prefix != "" and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix))
        if bad_prefix or len(name) > 63 or not LABEL_NAME.match(name):
            raise _Bad(f"invalid label key {key!r}")
        if len(val) > 63 or not LABEL_VALUE.match(val):
            raise _Bad(f"invalid value {val!r} for label {key!r}")
        if _restricted_label(prefix, key):
            raise _Bad(
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


def _restricted_label(prefix: str, key: str) -> bool:
    """Whether ``key`` is in a namespace NodeRestriction keeps from nodes, as kubelet checks it."""
    if key in KUBELET_LABELS:
        return False
    if any(prefix == ns or prefix.endswith("." + ns) for ns in KUBELET_LABEL_NAMESPACES):
        return False
    return any(prefix == ns or prefix.endswith("." + ns) for ns in ("kubernetes.io", "k8s.io"))


def _bool(value: Any, base: Path) -> bool:
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise _Bad(f"expected true or false, got {value!r}")
    return text == "true"


def _choice(*choices: str) -> Callable[[Any, Path], str]:
    def parse(value: Any, base: Path) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise _Bad(f"must be one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


def _choice_exact(*choices: str) -> Callable[[Any, Path], str]:
    def parse(value: Any, base: Path) -> str:
        text = str(value).strip()
        if text not in choices:
            raise _Bad(f"must be one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


def _domain(value: Any, base: Path) -> str:
    text = str(value).strip().rstrip(".")
    if not DNS_SUBDOMAIN.match(text):
        raise _Bad(f"{value!r} is not a valid DNS domain")
    return text


def _masters(value: Any, base: Path) -> str:
    urls = [u.strip() for u in str(value).split(",") if u.strip()]
    if not urls:
        raise _Bad("expected one or more http(s):// URLs separated by commas")
    for url in urls:
        if not re.match(r"^https?://[^/\s]+(/.*)?$", url):
            raise _Bad(f"{url!r} is not an http:// or https:// URL")
    return ",".join(u.rstrip("/") for u in urls)


TAINT = re.compile(r"^([^=:\s]+)(?:=([^:\s]*))?:(NoSchedule|PreferNoSchedule|NoExecute)$")


def _taints(value: Any, base: Path) -> tuple[dict[str, str], ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise _Bad(f"expected key=value:Effect entries, got {value!r}")
    taints = []
    for item in items:
        match = TAINT.match(str(item).strip())
        if not match:
            raise _Bad(f"{item!r} is not key[=value]:NoSchedule|PreferNoSchedule|NoExecute")
        taint = {"key": match.group(1), "effect": match.group(3)}
        if match.group(2):
            taint["value"] = match.group(2)
        taints.append(taint)
    return tuple(taints)


def _ttl(value: Any, base: Path) -> float:
    """A duration that may be zero (``0`` or ``0s``: off)."""
    if str(value).strip() in ("0", "0s", "0.0"):
        return 0.0
    return parse_duration(value, base)


def _tls_version(value: Any, base: Path) -> str:
    try:
        return tls.parse_min_version(str(value).strip())
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def _cipher_suites(value: Any, base: Path) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise _Bad(f"expected a list of cipher suite names, got {value!r}")
    try:
        return tls.parse_cipher_suites([str(v).strip() for v in items if str(v).strip()])
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def _thresholds(value: Any, base: Path) -> tuple[thresholds.Threshold, ...]:
    try:
        return thresholds.parse_thresholds(_joined(value))
    except errors.InvalidInput as exc:
        raise _Bad(str(exc)) from None


def _grace_periods(value: Any, base: Path) -> dict[str, float]:
    if isinstance(value, dict):
        value = ",".join(f"{k}={v}" for k, v in value.items())
    try:
        return thresholds.parse_grace_periods(_joined(value), lambda text: parse_duration(text))
    except errors.InvalidInput as exc:
        raise _Bad(str(exc)) from None


def _reserved(value: Any, base: Path) -> dict[str, int]:
    try:
        return thresholds.parse_reserved(_joined(value))
    except errors.InvalidInput as exc:
        raise _Bad(str(exc)) from None


def _joined(value: Any) -> str:
    """``a<1,b<2`` as a flag, or as the file's mapping ``{a: 1, b: 2}`` / list (kubelet's config)."""
    if isinstance(value, dict):
        sep = "=" if all(k in thresholds.RESERVABLE for k in value) else "<"
        return ",".join(f"{k}{sep}{v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, str):
        return value
    raise _Bad(f"expected a comma-separated list or a mapping, got {value!r}")


def _mqtt_server(value: Any, base: Path) -> str:
    """``tcp://host:port`` or ``ssl://host:port`` (edgecore's form)."""
    text = str(value).strip()
    match = re.match(r"^(tcp|ssl)://(\[[0-9a-fA-F:.]+\]|[^:/\s\[\]]+):(\d{1,5})$", text)
    if not match or not 0 < int(match.group(3)) <= 65535:
        raise _Bad(f"expected tcp://host:port or ssl://host:port, got {value!r}")
    return text


def _mqtt_mode(value: Any, base: Path) -> int:
    try:
        return _int(0, 2)(value, base)
    except _Bad:
        raise _Bad(f"must be 0 (internal), 1 (both) or 2 (external), got {value!r}") from None


def _text(value: Any, base: Path) -> str:
    if value is None:
        return ""
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise _Bad(f"expected a string, got {value!r}")
    return str(value)


@dataclass(frozen=True)
class Field:
    path: str  # YAML path, e.g. "server.port"
    flag: str  # kubelet's flag name
    target: tuple[str, str]  # (settings group or "", attribute)
    parse: Callable[[Any, Path], Any]

    @property
    def boolean(self) -> bool:
        """A kubelet boolean flag: ``--flag`` alone means true."""
        return self.parse is _bool


FIELDS = [
    Field("node.name", "--hostname-override", ("node", "name"), _node_name),
    Field("node.nodeIP", "--node-ip", ("node", "node_ip"), _ip),
    Field("node.labels", "--node-labels", ("node", "labels"), _labels),
    Field("server.address", "--address", ("server", "address"), _ip),
    Field("server.port", "--port", ("server", "port"), _int(0, 65535)),
    Field("server.tlsCertFile", "--tls-cert-file", ("server", "tls_cert_file"), _path),
    Field("server.tlsPrivateKeyFile", "--tls-private-key-file", ("server", "tls_private_key_file"), _path),
    Field(
        "server.rotateServerCertificates",
        "--rotate-server-certificates",
        ("server", "rotate_server_certificates"),
        _bool,
    ),
    Field("server.healthzPort", "--healthz-port", ("server", "healthz_port"), _int(0, 65535)),
    Field("server.healthzBindAddress", "--healthz-bind-address", ("server", "healthz_bind_address"), _ip),
    Field("server.localAPIAddress", "--local-api-address", ("server", "local_api_address"), _ip),
    Field("server.localAPIPort", "--local-api-port", ("server", "local_api_port"), _int(0, 65535)),
    Field(
        "server.streamingConnectionIdleTimeout",
        "--streaming-connection-idle-timeout",
        ("server", "streaming_connection_idle_timeout"),
        parse_duration,
    ),
    Field(
        "server.streamCreationTimeout",
        "--stream-creation-timeout",
        ("server", "stream_creation_timeout"),
        parse_duration,
    ),
    Field(
        "server.maxStreamsPerPod", "--max-streams-per-pod", ("server", "max_streams_per_pod"), _int(1, 100000)
    ),
    Field("server.maxStreams", "--max-streams", ("server", "max_streams"), _int(1, 100000)),
    Field(
        "runtime.containerRuntimeEndpoint", "--container-runtime-endpoint", ("runtime", "endpoint"), _endpoint
    ),
    Field(
        "runtime.runtimeRequestTimeout",
        "--runtime-request-timeout",
        ("runtime", "request_timeout"),
        parse_duration,
    ),
    Field("runtime.relistPeriod", "--relist-period", ("runtime", "relist_period"), parse_duration),
    Field("runtime.cgroupDriver", "--cgroup-driver", ("runtime", "cgroup_driver"), _choice(*CGROUP_DRIVERS)),
    Field("resources.evictionHard", "--eviction-hard", ("resources", "eviction_hard"), _thresholds),
    Field("resources.evictionSoft", "--eviction-soft", ("resources", "eviction_soft"), _thresholds),
    Field(
        "resources.evictionSoftGracePeriod",
        "--eviction-soft-grace-period",
        ("resources", "eviction_soft_grace_period"),
        _grace_periods,
    ),
    Field(
        "resources.evictionPressureTransitionPeriod",
        "--eviction-pressure-transition-period",
        ("resources", "eviction_pressure_transition_period"),
        parse_duration,
    ),
    Field("resources.kubeReserved", "--kube-reserved", ("resources", "kube_reserved"), _reserved),
    Field("resources.systemReserved", "--system-reserved", ("resources", "system_reserved"), _reserved),
    Field(
        "resources.housekeepingInterval",
        "--housekeeping-interval",
        ("resources", "housekeeping_interval"),
        parse_duration,
    ),
    Field("pods.staticPodPath", "--pod-manifest-path", ("pods", "manifest_path"), _path),
    Field(
        "pods.fileCheckFrequency", "--file-check-frequency", ("pods", "file_check_frequency"), parse_duration
    ),
    Field("pods.podLogsDir", "--pod-logs-dir", ("pods", "logs_dir"), _path),
    Field("pods.maxPods", "--max-pods", ("pods", "max_pods"), _int(1, 100000)),
    Field("pods.clusterDomain", "--cluster-domain", ("pods", "cluster_domain"), _domain),
    Field("pods.clusterDNS", "--cluster-dns", ("pods", "cluster_dns"), _ip_list),
    Field("pods.resolvConf", "--resolv-conf", ("pods", "resolv_conf"), _path),
    Field(
        "pods.crashLoopBackOffMax",
        "--crash-loop-backoff-max",
        ("pods", "crash_loop_backoff_max"),
        parse_duration,
    ),
    Field("store.mapSize", "--store-map-size", ("store", "map_size"), _map_size),
    Field("logging.level", "--log-level", ("logging", "level"), _choice(*LEVELS)),
    Field("logging.verbosity", "-v", ("logging", "verbosity"), _int(0, 10)),
    Field("cluster.master", "--master", ("cluster", "master"), _masters),
    Field("cluster.kubeconfig", "--kubeconfig", ("cluster", "kubeconfig"), _path),
    Field(
        "cluster.nodeStatusReportFrequency",
        "--node-status-report-frequency",
        ("cluster", "node_status_report_frequency"),
        parse_duration,
    ),
    Field(
        "cluster.registerWithTaints", "--register-with-taints", ("cluster", "register_with_taints"), _taints
    ),
    Field(
        "cluster.onNodeDeleted",
        "--on-node-deleted",
        ("cluster", "on_node_deleted"),
        _choice(*ON_NODE_DELETED),
    ),
    Field("cluster.rotateCertificates", "--rotate-certificates", ("cluster", "rotate_certificates"), _bool),
    Field("server.tlsMinVersion", "--tls-min-version", ("server", "tls_min_version"), _tls_version),
    Field("server.tlsCipherSuites", "--tls-cipher-suites", ("server", "tls_cipher_suites"), _cipher_suites),
    Field("auth.clientCAFile", "--client-ca-file", ("auth", "client_ca_file"), _path),
    Field("auth.anonymous", "--anonymous-auth", ("auth", "anonymous"), _bool),
    Field("auth.tokenWebhook", "--authentication-token-webhook", ("auth", "token_webhook"), _bool),
    Field(
        "auth.tokenWebhookCacheTTL",
        "--authentication-token-webhook-cache-ttl",
        ("auth", "token_webhook_cache_ttl"),
        _ttl,
    ),
    Field(
        "auth.authorizationMode",
        "--authorization-mode",
        ("auth", "authorization_mode"),
        _choice_exact("AlwaysAllow", "Webhook"),
    ),
    Field(
        "auth.webhookCacheAuthorizedTTL",
        "--authorization-webhook-cache-authorized-ttl",
        ("auth", "webhook_cache_authorized_ttl"),
        _ttl,
    ),
    Field(
        "auth.webhookCacheUnauthorizedTTL",
        "--authorization-webhook-cache-unauthorized-ttl",
        ("auth", "webhook_cache_unauthorized_ttl"),
        _ttl,
    ),
    Field(
        "auth.offlineAuthorizedTTL",
        "--authorization-offline-authorized-ttl",
        ("auth", "offline_authorized_ttl"),
        _ttl,
    ),
    Field("rootDir", "--root-dir", ("", "root_dir"), _path),
    Field("eventBus.enable", "--event-bus", ("event_bus", "enable"), _bool),
    Field("eventBus.mqttMode", "--mqtt-mode", ("event_bus", "mqtt_mode"), _mqtt_mode),
    Field(
        "eventBus.mqttServerInternal",
        "--mqtt-server-internal",
        ("event_bus", "mqtt_server_internal"),
        _mqtt_server,
    ),
    Field(
        "eventBus.mqttServerExternal",
        "--mqtt-server-external",
        ("event_bus", "mqtt_server_external"),
        _mqtt_server,
    ),
    Field("eventBus.mqttQOS", "--mqtt-qos", ("event_bus", "mqtt_qos"), _int(0, 2)),
    Field("eventBus.mqttRetain", "--mqtt-retain", ("event_bus", "mqtt_retain"), _bool),
    Field(
        "eventBus.mqttSessionQueueSize",
        "--mqtt-session-queue-size",
        ("event_bus", "mqtt_session_queue_size"),
        _int(1, 1_000_000),
    ),
    Field("eventBus.mqttSubClientID", "--mqtt-sub-client-id", ("event_bus", "mqtt_sub_client_id"), _text),
    Field("eventBus.mqttPubClientID", "--mqtt-pub-client-id", ("event_bus", "mqtt_pub_client_id"), _text),
    Field("eventBus.mqttUsername", "--mqtt-username", ("event_bus", "mqtt_username"), _text),
    Field("eventBus.mqttPassword", "--mqtt-password", ("event_bus", "mqtt_password"), _text),
    Field("eventBus.tlsMqttCAFile", "--mqtt-tls-ca-file", ("event_bus", "tls_mqtt_ca_file"), _path),
    Field("eventBus.tlsMqttCertFile", "--mqtt-tls-cert-file", ("event_bus", "tls_mqtt_cert_file"), _path),
    Field(
        "eventBus.tlsMqttPrivateKeyFile",
        "--mqtt-tls-private-key-file",
        ("event_bus", "tls_mqtt_private_key_file"),
        _path,
    ),
]
BY_PATH = {f.path: f for f in FIELDS}
BY_FLAG = {f.flag: f for f in FIELDS}


def _flatten(data: Any, prefix: str, out: dict[str, Any]) -> None:
    """Dotted paths of the file's leaves; unknown keys and non-mapping groups are errors."""
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "config"
        raise errors.ConfigError(where, f"expected a mapping, got {type(data).__name__}")
    groups = {p.split(".", 1)[0] for p in BY_PATH if "." in p}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if path in BY_PATH:
            out[path] = value
        elif not prefix and key in groups:
            if value is not None:
                _flatten(value, f"{key}.", out)
        else:
            siblings = [p.removeprefix(prefix) for p in BY_PATH if p.startswith(prefix)]
            if not prefix:
                siblings = [s.split(".", 1)[0] for s in siblings]
            close = difflib.get_close_matches(str(key), sorted(set(siblings)), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise errors.ConfigError(path, f"unknown field{hint}")


def read_file(path: Path) -> dict[str, Any]:
    """The file's settings as {yaml path: raw value}."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise errors.ConfigError("config", f"{path}: no such file") from None
    except OSError as exc:
        raise errors.ConfigError("config", f"{path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise errors.ConfigError(f"{path}{where}", getattr(exc, "problem", None) or "invalid YAML") from exc
    out: dict[str, Any] = {}
    if data is not None:
        _flatten(data, "", out)
    return out


def load_settings(config_file: Path | None, overrides: Mapping[str, object]) -> Settings:
    """Settings from ``config_file`` (optional) with ``overrides`` applied on top, all validated.

    ``overrides`` keys are kubelet flag names (``--port``, as the CLI passes them) or the file's
    dotted paths (``server.port``); an error names the key it came from, so a user sees the flag
    they typed. ``None`` values are skipped (flags not given); relative paths are taken from the
    working directory. Raises ``errors.ConfigError`` for any problem.
    """
    values: dict[str, tuple[str, Any, Path]] = {}  # yaml path -> (where, raw value, base dir)
    if config_file is not None:
        base = config_file.resolve().parent
        for path, raw in read_file(config_file).items():
            values[path] = (path, raw, base)
    for key, raw in overrides.items():
        if raw is None:
            continue
        field = BY_FLAG.get(key) or BY_PATH.get(key)
        if field is None:
            known = sorted(BY_FLAG) if key.startswith("-") else sorted(BY_PATH)
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise errors.ConfigError(key, f"unknown setting{hint}")
        values[field.path] = (key, raw, Path.cwd())
    groups: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for path, (where, raw, base) in values.items():
        f = BY_PATH[path]
        try:
            parsed = f.parse(raw, base)
        except _Bad as exc:
            raise errors.ConfigError(where, str(exc)) from None
        group, attr = f.target
        (groups.setdefault(group, {}) if group else top)[attr] = parsed
    settings = Settings()
    for group, attrs in groups.items():
        top[group] = replace(getattr(settings, group), **attrs)
    settings = replace(settings, **top)
    try:
        _node_name(settings.node.name, Path())
    except _Bad as exc:
        raise errors.ConfigError("node.name", f"{exc}; set --hostname-override") from None
    _check_event_bus(settings)
    resources = settings.resources
    for soft in resources.eviction_soft:
        if soft.signal not in resources.eviction_soft_grace_period:
            raise errors.ConfigError(
                "resources.evictionSoftGracePeriod", f"no grace period for the soft threshold {soft.text()}"
            )
    return settings


def _check_event_bus(settings: Settings) -> None:
    """What no single eventBus field can say wrong alone."""
    bus = settings.event_bus
    if (bus.tls_mqtt_cert_file is None) != (bus.tls_mqtt_private_key_file is None):
        missing = "tlsMqttPrivateKeyFile" if bus.tls_mqtt_private_key_file is None else "tlsMqttCertFile"
        raise errors.ConfigError(f"eventBus.{missing}", "the TLS certificate and key go together")
    if bus.mqtt_password and not bus.mqtt_username:
        raise errors.ConfigError("eventBus.mqttPassword", "a password needs eventBus.mqttUsername")
    if bus.internal and bus.mqtt_server_internal.startswith("ssl://") and bus.tls_mqtt_cert_file is None:
        raise errors.ConfigError(
            "eventBus.mqttServerInternal", "ssl:// needs eventBus.tlsMqttCertFile and tlsMqttPrivateKeyFile"
        )
    if bus.mqtt_mode == 1 and bus.mqtt_server_internal == bus.mqtt_server_external:
        raise errors.ConfigError(
            "eventBus.mqttServerExternal", "mode 1 (both) needs two brokers at different addresses"
        )
