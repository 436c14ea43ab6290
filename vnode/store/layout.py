"""The store's layout: every table, its keys and its records, named once.

Schema version 1 (``SCHEMA_VERSION`` in ``vnode.store``, kept in ``meta/schema``):

========== ============================== ===================================================
table      key                            value
========== ============================== ===================================================
meta       ``schema``                     the schema version (an int)
meta       ``owner``                      ``Owner``: the cluster (CA hash) and node cached here
meta       ``run``                        ``RunRecord``: the last ``vnode run`` on this store (pid,
                                          runtime endpoint, healthz URL), for ``vnode status``
pods       pod UID                        ``PodRecord``: the pod and the source it came from
podstate   pod UID                        ``PodState``: what the pod's worker must remember
link       ``state``                      ``LinkState``: active master, or offline since when
link       ``node``                       the Node object as the API last showed it
events     12-digit sequence number       ``StoredEvent``: an Event waiting to be posted
events     ``dropped``                    how many Events the bounded queue dropped (an int)
objects    ``<kind>/<namespace>/<name>``  ``ObjectRow``: a configMap, secret or token for
                                          offline use; secrets and tokens sealed
eventlog   12-digit sequence number       ``StoredEvent``: the node's last Events (1,000), for
                                          the local API's ``kubectl get events`` / ``describe``
openapi    ``api/v1``                     ``OpenApiRow``: the control plane's OpenAPI v3
                                          document of core/v1, for kubectl offline
device_twins device id (``<ns>/<name>``)  ``TwinDevice``: a device and its twins (vnode.devices)
mqtt_sessions client id                   ``MqttSession``: a persistent session of vnode's broker
mqtt_retained topic                       ``MqttRetained``: a retained message
mqtt_outbox 20-digit sequence number      ``MqttOutboxRow``: a message for the external broker
========== ============================== ===================================================

A change that an older vnode would misread (a renamed table or key, a record field that changes
meaning or becomes required) bumps ``SCHEMA_VERSION``. The store then refuses to open under the
old version with an error naming the path (it is never wiped), so the bump must come with a
migration in ``Store.open`` from every version still in the field, tested on a store written by
the previous release. Adding an optional field or a new table does not need a bump.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

META = "meta"
PODS = "pods"
PODSTATE = "podstate"
LINK = "link"
EVENTS = "events"
OBJECTS = "objects"
EVENTLOG = "eventlog"
OPENAPI = "openapi"
DEVICE_TWINS = "device_twins"
MQTT_SESSIONS = "mqtt_sessions"
MQTT_RETAINED = "mqtt_retained"
MQTT_OUTBOX = "mqtt_outbox"

TABLES = (
    META,
    PODS,
    PODSTATE,
    LINK,
    EVENTS,
    OBJECTS,
    DEVICE_TWINS,
    MQTT_SESSIONS,
    MQTT_RETAINED,
    MQTT_OUTBOX,
    OPENAPI,
    EVENTLOG,
)

META_RUN = "run"
EVENTS_DROPPED = "dropped"  # the key of the dropped count in EVENTS (event keys are numbers)
LINK_STATE = "state"
LINK_NODE = "node"


class Owner(TypedDict):
    node: str
    caHash: str


class RunRecord(TypedDict):
    """What ``vnode status`` needs to know of the node that runs (or last ran) on this store."""

    pid: int
    started: str  # RFC 3339
    node: str
    version: str
    runtimeEndpoint: str
    healthz: NotRequired[str]  # the URL of /healthz on the plain healthz port, when it listens
    stopped: NotRequired[str]  # RFC 3339, written on a clean stop


class PodRecord(TypedDict):
    source: str  # "file" or "api"
    pod: dict[str, Any]


class SyncProblem(TypedDict):
    message: str
    since: str  # RFC 3339


class PodState(TypedDict):
    attempts: dict[str, int]  # container name -> the attempt its newest instance was created with
    sandboxAttempt: int
    status: dict[str, Any] | None
    terminal: bool
    backoff: dict[str, dict[str, Any]]  # container name -> crash back-off (delay, updated)
    evicted: NotRequired[str]  # the eviction's message
    problem: NotRequired[SyncProblem]  # why the pod's syncs fail, for `vnode status`


class LinkState(TypedDict, total=False):
    activeMaster: str
    offlineSince: str


class StoredEvent(TypedDict):
    time: str
    namespace: str
    name: str
    uid: str
    type: str
    reason: str
    message: str
    kind: str


class ObjectRow(TypedDict, total=False):
    object: dict[str, Any] | None  # None: known not to exist
    sealed: str  # the sealed JSON of a secret or token (``vnode.security.sealing``)


class OpenApiRow(TypedDict):
    hash: str  # as the API server's /openapi/v3 index named it
    document: dict[str, Any]


class TwinDevice(TypedDict):
    """KubeEdge's device document: ``twin`` maps a key to its ``MsgTwin`` JSON (expected/actual
    ``{value, metadata: {timestamp}}``, ``optional``, ``metadata: {type}``, versions)."""

    id: str
    name: str
    twin: dict[str, dict[str, Any]]
    state: NotRequired[str]
    last_online: NotRequired[str]


class MqttSession(TypedDict):
    subscriptions: dict[str, int]  # filter -> granted QoS
    queue: list[list[Any]]  # [topic, base64 payload, qos, retain], oldest first


class MqttRetained(TypedDict):
    payload: str  # base64
    qos: int


class MqttOutboxRow(TypedDict):
    topic: str
    payload: str  # base64
    qos: int
    retain: bool
