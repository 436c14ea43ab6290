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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from vnode import errors
from vnode.config import values as parsers
from vnode.config.settings import CGROUP_DRIVERS, ON_NODE_DELETED, Settings


@dataclass(frozen=True)
class Field:
    path: str  # YAML path, e.g. "server.port"
    flag: str  # kubelet's flag name
    target: tuple[str, str]  # (settings group or "", attribute)
    parse: Callable[[Any, Path], Any]

    @property
    def boolean(self) -> bool:
        """A kubelet boolean flag: ``--flag`` alone means true."""
        return self.parse is parsers.boolean


FIELDS = [
    Field("node.name", "--hostname-override", ("node", "name"), parsers.node_name),
    Field("node.nodeIP", "--node-ip", ("node", "node_ip"), parsers.ip),
    Field("node.labels", "--node-labels", ("node", "labels"), parsers.labels),
    Field("server.address", "--address", ("server", "address"), parsers.ip),
    Field("server.port", "--port", ("server", "port"), parsers.int_range(0, 65535)),
    Field("server.tlsCertFile", "--tls-cert-file", ("server", "tls_cert_file"), parsers.path),
    Field(
        "server.tlsPrivateKeyFile", "--tls-private-key-file", ("server", "tls_private_key_file"), parsers.path
    ),
    Field(
        "server.rotateServerCertificates",
        "--rotate-server-certificates",
        ("server", "rotate_server_certificates"),
        parsers.boolean,
    ),
    Field("server.healthzPort", "--healthz-port", ("server", "healthz_port"), parsers.int_range(0, 65535)),
    Field(
        "server.healthzBindAddress", "--healthz-bind-address", ("server", "healthz_bind_address"), parsers.ip
    ),
    Field("server.localAPIAddress", "--local-api-address", ("server", "local_api_address"), parsers.ip),
    Field(
        "server.localAPIPort", "--local-api-port", ("server", "local_api_port"), parsers.int_range(0, 65535)
    ),
    Field(
        "server.streamingConnectionIdleTimeout",
        "--streaming-connection-idle-timeout",
        ("server", "streaming_connection_idle_timeout"),
        parsers.parse_duration,
    ),
    Field(
        "server.streamCreationTimeout",
        "--stream-creation-timeout",
        ("server", "stream_creation_timeout"),
        parsers.parse_duration,
    ),
    Field(
        "server.maxStreamsPerPod",
        "--max-streams-per-pod",
        ("server", "max_streams_per_pod"),
        parsers.int_range(1, 100000),
    ),
    Field("server.maxStreams", "--max-streams", ("server", "max_streams"), parsers.int_range(1, 100000)),
    Field(
        "runtime.containerRuntimeEndpoint",
        "--container-runtime-endpoint",
        ("runtime", "endpoint"),
        parsers.endpoint,
    ),
    Field(
        "runtime.runtimeRequestTimeout",
        "--runtime-request-timeout",
        ("runtime", "request_timeout"),
        parsers.parse_duration,
    ),
    Field("runtime.relistPeriod", "--relist-period", ("runtime", "relist_period"), parsers.parse_duration),
    Field(
        "runtime.cgroupDriver",
        "--cgroup-driver",
        ("runtime", "cgroup_driver"),
        parsers.choice(*CGROUP_DRIVERS),
    ),
    Field(
        "resources.evictionHard",
        "--eviction-hard",
        ("resources", "eviction_hard"),
        parsers.eviction_thresholds,
    ),
    Field(
        "resources.evictionSoft",
        "--eviction-soft",
        ("resources", "eviction_soft"),
        parsers.eviction_thresholds,
    ),
    Field(
        "resources.evictionSoftGracePeriod",
        "--eviction-soft-grace-period",
        ("resources", "eviction_soft_grace_period"),
        parsers.grace_periods,
    ),
    Field(
        "resources.evictionPressureTransitionPeriod",
        "--eviction-pressure-transition-period",
        ("resources", "eviction_pressure_transition_period"),
        parsers.parse_duration,
    ),
    Field("resources.kubeReserved", "--kube-reserved", ("resources", "kube_reserved"), parsers.reserved),
    Field(
        "resources.systemReserved", "--system-reserved", ("resources", "system_reserved"), parsers.reserved
    ),
    Field(
        "resources.housekeepingInterval",
        "--housekeeping-interval",
        ("resources", "housekeeping_interval"),
        parsers.parse_duration,
    ),
    Field("pods.staticPodPath", "--pod-manifest-path", ("pods", "manifest_path"), parsers.path),
    Field(
        "pods.fileCheckFrequency",
        "--file-check-frequency",
        ("pods", "file_check_frequency"),
        parsers.parse_duration,
    ),
    Field("pods.podLogsDir", "--pod-logs-dir", ("pods", "logs_dir"), parsers.path),
    Field("pods.maxPods", "--max-pods", ("pods", "max_pods"), parsers.int_range(1, 100000)),
    Field("pods.clusterDomain", "--cluster-domain", ("pods", "cluster_domain"), parsers.domain),
    Field("pods.clusterDNS", "--cluster-dns", ("pods", "cluster_dns"), parsers.ip_list),
    Field("pods.resolvConf", "--resolv-conf", ("pods", "resolv_conf"), parsers.path),
    Field(
        "pods.crashLoopBackOffMax",
        "--crash-loop-backoff-max",
        ("pods", "crash_loop_backoff_max"),
        parsers.parse_duration,
    ),
    Field("store.mapSize", "--store-map-size", ("store", "map_size"), parsers.map_size),
    Field("logging.level", "--log-level", ("logging", "level"), parsers.choice(*parsers.LEVELS)),
    Field("logging.verbosity", "-v", ("logging", "verbosity"), parsers.int_range(0, 10)),
    Field("cluster.master", "--master", ("cluster", "master"), parsers.masters),
    Field("cluster.kubeconfig", "--kubeconfig", ("cluster", "kubeconfig"), parsers.path),
    Field(
        "cluster.nodeStatusReportFrequency",
        "--node-status-report-frequency",
        ("cluster", "node_status_report_frequency"),
        parsers.parse_duration,
    ),
    Field(
        "cluster.registerWithTaints",
        "--register-with-taints",
        ("cluster", "register_with_taints"),
        parsers.taints,
    ),
    Field(
        "cluster.onNodeDeleted",
        "--on-node-deleted",
        ("cluster", "on_node_deleted"),
        parsers.choice(*ON_NODE_DELETED),
    ),
    Field(
        "cluster.rotateCertificates",
        "--rotate-certificates",
        ("cluster", "rotate_certificates"),
        parsers.boolean,
    ),
    Field("server.tlsMinVersion", "--tls-min-version", ("server", "tls_min_version"), parsers.tls_version),
    Field(
        "server.tlsCipherSuites",
        "--tls-cipher-suites",
        ("server", "tls_cipher_suites"),
        parsers.cipher_suites,
    ),
    Field("auth.clientCAFile", "--client-ca-file", ("auth", "client_ca_file"), parsers.path),
    Field("auth.anonymous", "--anonymous-auth", ("auth", "anonymous"), parsers.boolean),
    Field("auth.tokenWebhook", "--authentication-token-webhook", ("auth", "token_webhook"), parsers.boolean),
    Field(
        "auth.tokenWebhookCacheTTL",
        "--authentication-token-webhook-cache-ttl",
        ("auth", "token_webhook_cache_ttl"),
        parsers.ttl,
    ),
    Field(
        "auth.authorizationMode",
        "--authorization-mode",
        ("auth", "authorization_mode"),
        parsers.choice_exact("AlwaysAllow", "Webhook"),
    ),
    Field(
        "auth.webhookCacheAuthorizedTTL",
        "--authorization-webhook-cache-authorized-ttl",
        ("auth", "webhook_cache_authorized_ttl"),
        parsers.ttl,
    ),
    Field(
        "auth.webhookCacheUnauthorizedTTL",
        "--authorization-webhook-cache-unauthorized-ttl",
        ("auth", "webhook_cache_unauthorized_ttl"),
        parsers.ttl,
    ),
    Field(
        "auth.offlineAuthorizedTTL",
        "--authorization-offline-authorized-ttl",
        ("auth", "offline_authorized_ttl"),
        parsers.ttl,
    ),
    Field("rootDir", "--root-dir", ("", "root_dir"), parsers.path),
    Field("eventBus.enable", "--event-bus", ("event_bus", "enable"), parsers.boolean),
    Field("eventBus.mqttMode", "--mqtt-mode", ("event_bus", "mqtt_mode"), parsers.mqtt_mode),
    Field(
        "eventBus.mqttServerInternal",
        "--mqtt-server-internal",
        ("event_bus", "mqtt_server_internal"),
        parsers.mqtt_server,
    ),
    Field(
        "eventBus.mqttServerExternal",
        "--mqtt-server-external",
        ("event_bus", "mqtt_server_external"),
        parsers.mqtt_server,
    ),
    Field("eventBus.mqttQOS", "--mqtt-qos", ("event_bus", "mqtt_qos"), parsers.int_range(0, 2)),
    Field("eventBus.mqttRetain", "--mqtt-retain", ("event_bus", "mqtt_retain"), parsers.boolean),
    Field(
        "eventBus.mqttSessionQueueSize",
        "--mqtt-session-queue-size",
        ("event_bus", "mqtt_session_queue_size"),
        parsers.int_range(1, 1_000_000),
    ),
    Field(
        "eventBus.mqttSubClientID", "--mqtt-sub-client-id", ("event_bus", "mqtt_sub_client_id"), parsers.text
    ),
    Field(
        "eventBus.mqttPubClientID", "--mqtt-pub-client-id", ("event_bus", "mqtt_pub_client_id"), parsers.text
    ),
    Field("eventBus.mqttUsername", "--mqtt-username", ("event_bus", "mqtt_username"), parsers.text),
    Field("eventBus.mqttPassword", "--mqtt-password", ("event_bus", "mqtt_password"), parsers.text),
    Field("eventBus.tlsMqttCAFile", "--mqtt-tls-ca-file", ("event_bus", "tls_mqtt_ca_file"), parsers.path),
    Field(
        "eventBus.tlsMqttCertFile", "--mqtt-tls-cert-file", ("event_bus", "tls_mqtt_cert_file"), parsers.path
    ),
    Field(
        "eventBus.tlsMqttPrivateKeyFile",
        "--mqtt-tls-private-key-file",
        ("event_bus", "tls_mqtt_private_key_file"),
        parsers.path,
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
        except parsers.Bad as exc:
            raise errors.ConfigError(where, str(exc)) from None
        group, attr = f.target
        (groups.setdefault(group, {}) if group else top)[attr] = parsed
    settings = Settings()
    for group, attrs in groups.items():
        top[group] = replace(getattr(settings, group), **attrs)
    settings = replace(settings, **top)
    try:
        parsers.node_name(settings.node.name, Path())
    except parsers.Bad as exc:
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
