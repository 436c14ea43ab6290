"""The node's settings: one frozen tree, built and validated by ``vnode.config.loader``.

Attribute names are Python's; the YAML keys and flags that set them are listed in the loader's
field table and documented in ``conf/vnode.yaml``. Defaults follow kubelet's.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from vnode.kube.thresholds import DEFAULT_HARD, Threshold, parse_thresholds


def default_node_name() -> str:
    return socket.gethostname().lower()


@dataclass(frozen=True)
class NodeSettings:
    name: str = field(default_factory=default_node_name)
    node_ip: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerSettings:
    address: str = "0.0.0.0"  # kubelet's: the API server reaches it at the node's IP; auth guards it
    port: int = 10250
    tls_cert_file: Path | None = None
    tls_private_key_file: Path | None = None
    rotate_server_certificates: bool = False  # ask the CSR API for the serving pair (kubelet-serving)
    healthz_port: int = 10248
    healthz_bind_address: str = "127.0.0.1"
    local_api_address: str = "127.0.0.1"  # the read-only local API (vnode.api.local)
    local_api_port: int = 10350  # 0 disables it
    # exec/attach/port-forward sessions (vnode.api.streams): kubelet's idle timeout and limits
    streaming_connection_idle_timeout: float = 4 * 3600.0
    stream_creation_timeout: float = 30.0
    max_streams_per_pod: int = 16
    max_streams: int = 256
    tls_min_version: str = "VersionTLS12"  # see vnode.security.tlspolicy
    tls_cipher_suites: tuple[str, ...] = ()  # Go names; empty: ECDHE with AEAD only


@dataclass(frozen=True)
class RuntimeSettings:
    endpoint: str = "unix:///run/containerd/containerd.sock"
    request_timeout: float = 120.0
    relist_period: float = 1.0
    cgroup_driver: str | None = None  # cgroupfs or systemd; None: ask the runtime (vnode.runtime.cgroups)


@dataclass(frozen=True)
class PodSettings:
    manifest_path: Path | None = None
    file_check_frequency: float = 20.0
    logs_dir: Path = Path("/var/log/pods")
    max_pods: int = 110
    cluster_domain: str = "cluster.local"
    cluster_dns: tuple[str, ...] = ()
    resolv_conf: Path = Path("/etc/resolv.conf")
    crash_loop_backoff_max: float = 300.0


@dataclass(frozen=True)
class ResourceSettings:
    """Eviction signals and reserved resources (vnode.stats.pressure, .thresholds), kubelet's."""

    eviction_hard: tuple[Threshold, ...] = field(default_factory=lambda: parse_thresholds(DEFAULT_HARD))
    eviction_soft: tuple[Threshold, ...] = ()
    eviction_soft_grace_period: dict[str, float] = field(default_factory=dict)
    eviction_pressure_transition_period: float = 300.0
    kube_reserved: dict[str, int] = field(default_factory=dict)
    system_reserved: dict[str, int] = field(default_factory=dict)
    housekeeping_interval: float = 10.0  # how often the pressure signals are checked


@dataclass(frozen=True)
class StoreSettings:
    map_size: int = 1 << 30


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "info"
    verbosity: int = 0


CGROUP_DRIVERS = ("cgroupfs", "systemd")  # --cgroup-driver
ON_NODE_DELETED = ("reregister", "exit")  # what the node does when its Node object is deleted


@dataclass(frozen=True)
class ClusterSettings:
    """The control plane, if any: without master and kubeconfig the node runs standalone."""

    master: str | None = None  # comma-separated URLs of the masters
    kubeconfig: Path | None = None
    node_status_report_frequency: float = 300.0
    register_with_taints: tuple[dict[str, str], ...] = ()
    on_node_deleted: str = "reregister"  # or "exit": see vnode.controllers.node
    rotate_certificates: bool = False  # renew the client certificate through CSRs (vnode join sets it)

    @property
    def configured(self) -> bool:
        return self.master is not None or self.kubeconfig is not None


@dataclass(frozen=True)
class AuthSettings:
    """Who may call the kubelet API and the local API (vnode.security.authn, .authz, .localca)."""

    client_ca_file: Path | None = None  # besides the node's local CA, always trusted
    anonymous: bool = False
    token_webhook: bool | None = None  # None: on when a control plane is configured
    token_webhook_cache_ttl: float = 120.0
    authorization_mode: str | None = None  # None: Webhook with a control plane, else AlwaysAllow
    webhook_cache_authorized_ttl: float = 300.0
    webhook_cache_unauthorized_ttl: float = 30.0
    offline_authorized_ttl: float = 0.0  # how much longer allowed answers serve while offline


@dataclass(frozen=True)
class EventBusSettings:
    """MQTT for devices and their mappers (vnode.mqtt), named as edgecore's ``eventBus`` block."""

    enable: bool = False
    mqtt_mode: int = 0  # 0: vnode's own broker (as EdgeSite's default); 1: both; 2: external only
    mqtt_server_internal: str = "tcp://127.0.0.1:1884"
    mqtt_server_external: str = "tcp://127.0.0.1:1883"
    mqtt_qos: int = 0
    mqtt_retain: bool = False
    mqtt_session_queue_size: int = 100
    mqtt_sub_client_id: str = ""  # empty: hub-client-sub-<node name>
    mqtt_pub_client_id: str = ""  # empty: hub-client-pub-<node name>
    mqtt_username: str = ""
    mqtt_password: str = ""
    tls_mqtt_ca_file: Path | None = None
    tls_mqtt_cert_file: Path | None = None
    tls_mqtt_private_key_file: Path | None = None

    @property
    def internal(self) -> bool:
        return self.enable and self.mqtt_mode in (0, 1)

    @property
    def external(self) -> bool:
        return self.enable and self.mqtt_mode in (1, 2)


@dataclass(frozen=True)
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    pods: PodSettings = field(default_factory=PodSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    resources: ResourceSettings = field(default_factory=ResourceSettings)
    event_bus: EventBusSettings = field(default_factory=EventBusSettings)
    root_dir: Path = Path("/var/lib/vnode")

    @property
    def store_path(self) -> Path:
        """The LMDB environment directory."""
        return self.root_dir / "store"

    @property
    def store_key_file(self) -> Path:
        """The key sealing secrets in the store (0600, beside it, never inside it)."""
        return self.root_dir / "store.key"

    @property
    def pki_dir(self) -> Path:
        """Where a self-signed serving pair is generated when none is configured."""
        return self.root_dir / "pki"

    @property
    def local_token_path(self) -> Path:
        """The local API's bearer token (0600)."""
        return self.root_dir / "local.token"

    @property
    def local_kubeconfig_path(self) -> Path:
        """The kubeconfig for the local API (0600), rewritten at every start."""
        return self.root_dir / "local.kubeconfig"
