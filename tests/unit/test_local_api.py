"""The local API's pure parts (selectors, Tables, Status errors, history, credentials) and its routes
over a real aiohttp listener with an in-memory pod provider."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from integration.faults import serving
from integration.node import wait_for
from vnode import errors
from vnode.api import credentials, local, server, watchcache
from vnode.api.apistatus import ApiError
from vnode.api.watchcache import PodHistory
from vnode.kube import selectors, tables
from vnode.kube.selectors import Filter, parse_selector
from vnode.provider.protocols import LogTarget
from vnode.security import keys
from vnode.security.tls import ensure_self_signed

NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=dt.UTC)
TOKEN = "t" * 40


def make_pod(name: str, *, phase: str = "Running", ready: bool = True, labels: dict[str, str] | None = None,
             restarts: int = 0, namespace: str = "default") -> dict[str, Any]:  # fmt: skip
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": labels or {},
                     "creationTimestamp": "2026-11-24T11:55:00Z"},
        "spec": {"nodeName": "edge-1", "containers": [{"name": "main", "image": "busybox"}]},
        "status": {"phase": phase, "podIP": "10.0.0.5", "containerStatuses": [
            {"name": "main", "ready": ready, "restartCount": restarts,
             "state": {"running": {}} if ready else {"waiting": {"reason": "CrashLoopBackOff"}}}]},
    }  # fmt: skip


class FakePods:
    """The pod manager's surface: pods in a dict, listeners called on ``change``."""

    def __init__(self, log: Path) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.listeners: list[Callable[[str], None]] = []
        self.log = log

    def list_pods(self) -> list[dict[str, Any]]:
        return list(self.pods.values())

    def listed_pod(self, uid: str) -> dict[str, Any] | None:
        return self.pods.get(uid)

    def add_listener(self, callback: Callable[[str], None]) -> None:
        self.listeners.append(callback)

    def change(self, pod: dict[str, Any] | None, uid: str = "") -> None:
        if pod is None:
            self.pods.pop(uid)
        else:
            uid = pod["metadata"]["uid"]
            self.pods[uid] = pod
        for callback in self.listeners:
            callback(uid)

    async def locate_log(self, namespace: str, pod: str, container: str, previous: bool) -> LogTarget:
        if container != "main":
            raise errors.NotFound(f'container "{container}" in pod "{pod}" is not available')

        async def stopped() -> bool:
            return False

        return LogTarget(str(self.log), stopped)


# -- selectors --------------------------------------------------------------------------------


def test_label_selectors_match_like_the_api_server() -> None:
    labels = {"app": "web", "tier": "front"}
    assert selectors.matches(labels, parse_selector("app=web,tier!=back"))
    assert selectors.matches(labels, parse_selector("app in (web, api), !missing, tier"))
    assert not selectors.matches(labels, parse_selector("app notin (web)"))
    assert not selectors.matches(labels, parse_selector("app==api"))
    assert not selectors.matches(labels, parse_selector("missing"))
    assert parse_selector("") == []


def test_field_selectors_accept_only_known_fields_and_equality() -> None:
    reqs = parse_selector("status.phase=Running,metadata.name!=x", fields=selectors.POD_FIELDS)
    assert reqs == [("status.phase", "=", ("Running",)), ("metadata.name", "!=", ("x",))]
    with pytest.raises(errors.InvalidInput) as bad_field:
        parse_selector("spec.restartPolicy=Always", fields=selectors.POD_FIELDS)
    assert errors.http_status(bad_field.value) == 400 and "field label not supported" in str(bad_field.value)
    with pytest.raises(errors.InvalidInput):
        parse_selector("status.phase in (Running)", fields=selectors.POD_FIELDS)
    with pytest.raises(errors.InvalidInput):
        parse_selector("a=b=c")


def test_filter_combines_namespace_labels_and_fields() -> None:
    pod = make_pod("a", labels={"app": "web"})
    assert Filter("default", parse_selector("app=web"), parse_selector("spec.nodeName=edge-1")).wants(pod)
    assert not Filter("kube-system", [], []).wants(pod)
    assert not Filter(None, [], parse_selector("status.phase=Pending")).wants(pod)


# -- Tables and Status --------------------------------------------------------------------------


def test_human_age_follows_kubectl() -> None:
    cases = {0: "0s", 119: "119s", 125: "2m5s", 600: "10m", 7200: "120m", 3 * 3600 + 60: "3h1m",
             20 * 3600: "20h", 3 * 86400 + 3600: "3d1h", 30 * 86400: "30d",
             3 * 365 * 86400: "3y0d"}  # fmt: skip
    assert {s: tables.human_age(s) for s in cases} == cases


def test_pod_table_has_kubectl_columns_and_partial_metadata_rows() -> None:
    pods = [make_pod("a"), make_pod("b", ready=False, restarts=3)]
    table = tables.table("Pod", pods, "7", NOW)
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    names = [(c["name"], c["priority"]) for c in table["columnDefinitions"]]
    assert names == [
        ("Name", 0),
        ("Ready", 0),
        ("Status", 0),
        ("Restarts", 0),
        ("Age", 0),
        ("IP", 1),
        ("Node", 1),
    ]
    assert [r["cells"] for r in table["rows"]] == [
        ["a", "1/1", "Running", "0", "5m", "10.0.0.5", "edge-1"],
        ["b", "0/1", "CrashLoopBackOff", "3", "5m", "10.0.0.5", "edge-1"],
    ]
    assert table["rows"][0]["object"] == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                          "metadata": pods[0]["metadata"]}  # fmt: skip
    assert "columnDefinitions" not in tables.table("Pod", pods, "7", NOW, columns=False)


def test_pod_status_text_covers_init_and_deletion() -> None:
    pod = make_pod("a", phase="Pending")
    pod["spec"]["initContainers"] = [{"name": "i1"}, {"name": "i2"}]
    pod["status"]["initContainerStatuses"] = [
        {"name": "i1", "state": {"terminated": {"exitCode": 0}}},
        {"name": "i2", "state": {"running": {}}},
    ]
    assert tables.pod_status_text(pod) == "Init:1/2"
    pod["status"]["initContainerStatuses"][1]["state"] = {"terminated": {"exitCode": 3, "reason": "Error"}}
    assert tables.pod_status_text(pod) == "Init:Error"
    pod["metadata"]["deletionTimestamp"] = "2026-11-24T12:00:00Z"
    assert tables.pod_status_text(pod) == "Terminating"


def test_node_table_row() -> None:
    node = local.minimal_node("edge-1", "192.0.2.1", {"zone": "a"}, None, "2026-11-24T10:00:00Z", "v1.32.0")
    row = tables.table("Node", [node], "1", NOW)["rows"][0]["cells"]
    assert row[:5] == ["edge-1", "Ready", "edge", "120m", "v1.32.0"] and row[5] == "192.0.2.1"
    down = local.minimal_node("edge-1", "192.0.2.1", {}, "socket gone", "2026-11-24T10:00:00Z", "v1.32.0")
    assert tables.node_cells(down, NOW)[1] == "NotReady"
    assert down["metadata"]["labels"]["kubernetes.io/hostname"] == "edge-1"


def test_wants_table_reads_kubectls_accept_header() -> None:
    accept = (
        "application/json;as=Table;v=v1;g=meta.k8s.io,"
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
    )
    assert tables.wants_table(accept)
    assert not tables.wants_table("application/json")
    assert not tables.wants_table("application/json;as=Table;v=v1beta1;g=meta.k8s.io")


def test_errors_are_status_objects() -> None:
    assert ApiError(404, 'pods "x" not found').body() == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'pods "x" not found', "reason": "NotFound", "code": 404,
    }  # fmt: skip
    assert ApiError.from_vnode(errors.Unprocessable("tailLines: bad")).body()["reason"] == "Invalid"
    assert ApiError.from_vnode(errors.Unavailable("down")).code == 503


# -- history and watches ------------------------------------------------------------------------


def test_history_assigns_increasing_versions_and_expires_what_it_lost(tmp_path: Path) -> None:
    pods = FakePods(tmp_path / "log")
    history = PodHistory(pods, keep=3)
    pods.change(make_pod("a"))
    pods.change(make_pod("a"))  # no change: no event
    assert history.rv == 1
    pods.change(make_pod("a", phase="Failed"))
    pods.change(None, "uid-a")
    assert history.rv == 3 and history.snapshot() == ([], 3)
    assert [(e.rv, e.type) for e in history.since(1) or []] == [(2, "MODIFIED"), (3, "DELETED")]
    pods.change(make_pod("b"))
    pods.change(make_pod("c"))
    assert history.since(1) is None  # the event with rv 2 has been dropped
    assert history.since(2) is not None
    assert history.since(99) is None  # another process's counter
    items, rv = history.snapshot()
    assert rv == 5 and [p["metadata"]["resourceVersion"] for p in items] == ["4", "5"]
    assert items[0]["kind"] == "Pod" and items[0]["apiVersion"] == "v1"


def test_filtered_watch_turns_leaving_into_deleted(tmp_path: Path) -> None:
    pods = FakePods(tmp_path / "log")
    history = PodHistory(pods)
    pods.change(make_pod("a"))
    pods.change(make_pod("a", phase="Failed"))
    running = Filter(None, [], parse_selector("status.phase=Running", fields=selectors.POD_FIELDS))
    events = [watchcache.filtered(e, running) for e in history.since(0) or []]
    assert [(e[0], e[1]["status"]["phase"]) if e else None for e in events] == [
        ("ADDED", "Running"),
        ("DELETED", "Failed"),
    ]


# -- credentials --------------------------------------------------------------------------------


def test_token_is_kept_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "local.token"
    token = credentials.ensure_token(path)
    assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert credentials.ensure_token(path) == token
    path.chmod(0o644)  # readable by others: no longer a secret
    assert credentials.ensure_token(path) != token


def test_kubeconfig_trusts_a_self_signed_cert_and_skips_verify_otherwise(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.crt", tmp_path / "c.key"
    ensure_self_signed(cert, key, hostnames=["edge-1"], ips=["127.0.0.1"])
    pem = cert.read_text()
    assert keys.is_self_signed(pem)
    config = credentials.kubeconfig("https://127.0.0.1:10350", pem, TOKEN)
    cluster = config["clusters"][0]["cluster"]
    assert base64.b64decode(cluster["certificate-authority-data"]).decode() == pem
    assert config["current-context"] == "vnode-local" and config["users"][0]["user"]["token"] == TOKEN

    issued = _ca_issued_cert()
    assert not keys.is_self_signed(issued)
    assert credentials.kubeconfig("https://x:1", issued, TOKEN)["clusters"][0]["cluster"] == {
        "server": "https://x:1",
        "insecure-skip-tls-verify": True,
    }
    path = tmp_path / "credentials.kubeconfig"
    credentials.write_kubeconfig(path, "https://127.0.0.1:1", pem, TOKEN)
    assert path.stat().st_mode & 0o777 == 0o600 and yaml.safe_load(path.read_text())["kind"] == "Config"
    assert (
        credentials.server_url("0.0.0.0", 5) == "https://127.0.0.1:5"
        and credentials.server_url("::1", 5) == "https://[::1]:5"
    )


def _ca_issued_cert() -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-1")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "some CA")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# -- the routes -----------------------------------------------------------------------------------


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[str, FakePods]]:
    log = tmp_path / "0.log"
    log.write_bytes(b"2026-11-23T10:00:00.5Z stdout F hello\n2026-11-23T10:00:01Z stdout F world\n")
    pods = FakePods(log)
    pods.change(make_pod("a", labels={"app": "web"}))

    def node() -> dict[str, Any]:
        return local.minimal_node(
            "edge-1", "192.0.2.1", {}, None, "2026-11-24T10:00:00Z", "v1.32.0-vnode.0.1.0"
        )

    app = local.LocalApi(local.LocalSources(pods, node, local.EmptyObjects(), TOKEN, "v1.32.0-vnode.0.1.0"))
    async with serving(app.app) as url:
        yield url, pods


async def call(url: str, method: str = "GET", token: str | None = TOKEN, **headers: str) -> tuple[int, Any]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session, session.request(method, url, headers=headers) as resp:
        text = await resp.text()
        return resp.status, (await resp.json() if "json" in resp.content_type else text)


async def test_every_request_needs_the_token(api: tuple[str, FakePods]) -> None:
    base, _ = api
    for token in (None, "wrong"):
        code, body = await call(f"{base}/api/v1/pods", token=token)
        assert code == 401 and body["reason"] == "Unauthorized"
    assert (await call(f"{base}/version"))[1]["gitVersion"] == "v1.32.0-vnode.0.1.0"


async def test_writes_are_refused_and_unknown_paths_are_404(api: tuple[str, FakePods]) -> None:
    base, pods = api
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        code, body = await call(f"{base}/api/v1/namespaces/default/pods/a", method)
        assert code == 405 and body["kind"] == "Status" and "read-only" in body["message"]
    assert len(pods.pods) == 1
    for path in ("/apis/apps/v1/deployments", "/api/v1/widgets", "/api/v1/pods/a", "/openapi/v2"):
        code, body = await call(base + path)
        assert code == 404 and body["kind"] == "Status", path


async def test_discovery_lists_read_only_resources(api: tuple[str, FakePods]) -> None:
    base, _ = api
    assert (await call(f"{base}/api"))[1]["versions"] == ["v1"]
    resources = {r["name"]: r for r in (await call(f"{base}/api/v1"))[1]["resources"]}
    assert set(resources) == {"pods", "pods/log", "nodes", "configmaps", "secrets", "services"}
    assert resources["pods"]["verbs"] == ["get", "list", "watch"] and not resources["nodes"]["namespaced"]


async def test_pods_list_get_table_and_selectors(api: tuple[str, FakePods]) -> None:
    base, _ = api
    code, body = await call(f"{base}/api/v1/namespaces/default/pods?labelSelector=app%3Dweb")
    assert (
        code == 200 and body["kind"] == "PodList" and [p["metadata"]["name"] for p in body["items"]] == ["a"]
    )
    assert (await call(f"{base}/api/v1/pods?labelSelector=app%3Dapi"))[1]["items"] == []
    assert (await call(f"{base}/api/v1/namespaces/other/pods"))[1]["items"] == []
    assert (await call(f"{base}/api/v1/pods?fieldSelector=spec.restartPolicy%3DNever"))[0] == 400
    code, body = await call(
        f"{base}/api/v1/namespaces/default/pods/a", Accept="application/json;as=Table;v=v1;g=meta.k8s.io"
    )
    assert code == 200 and body["kind"] == "Table" and body["rows"][0]["cells"][:3] == ["a", "1/1", "Running"]
    code, body = await call(f"{base}/api/v1/namespaces/default/pods/zz")
    assert code == 404 and body["message"] == 'pods "zz" not found'
    code, body = await call(f"{base}/api/v1/nodes/edge-1")
    assert code == 200 and body["kind"] == "Node"
    assert (await call(f"{base}/api/v1/namespaces/default/configmaps"))[1]["items"] == []
    assert (await call(f"{base}/api/v1/namespaces/default/secrets/s"))[0] == 404


async def test_pod_log_defaults_the_only_container(api: tuple[str, FakePods]) -> None:
    base, pods = api
    assert await call(f"{base}/api/v1/namespaces/default/pods/a/log") == (200, "hello\nworld\n")
    assert (await call(f"{base}/api/v1/namespaces/default/pods/a/log?tailLines=1"))[1] == "world\n"
    code, body = await call(f"{base}/api/v1/namespaces/default/pods/a/log?container=other")
    assert code == 404 and body["kind"] == "Status"
    assert (await call(f"{base}/api/v1/namespaces/default/pods/a/log?tailLines=-1"))[0] == 422
    two = make_pod("b")
    two["spec"]["containers"].append({"name": "side"})
    pods.change(two)
    code, body = await call(f"{base}/api/v1/namespaces/default/pods/b/log")
    assert code == 400 and "choose one of: [main side]" in body["message"]


async def test_watch_streams_changes_after_a_version(api: tuple[str, FakePods]) -> None:
    base, pods = api
    rv = int((await call(f"{base}/api/v1/pods"))[1]["metadata"]["resourceVersion"])
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        url = f"{base}/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}"
        async with session.get(url) as resp:
            pods.change(make_pod("a", phase="Failed", ready=False))
            pods.change(None, "uid-a")
            modified = yaml.safe_load(await resp.content.readline())
            deleted = yaml.safe_load(await resp.content.readline())
        assert (modified["type"], deleted["type"]) == ("MODIFIED", "DELETED")
        assert int(modified["object"]["metadata"]["resourceVersion"]) == rv + 1
        async with session.get(f"{base}/api/v1/pods?watch=1&resourceVersion=0&timeoutSeconds=1") as resp:
            assert await resp.read() == b""  # nothing left to add, and the timeout ends the stream


def test_settings_flags_and_the_sample_config() -> None:
    from vnode.config.loader import load_settings

    sample = load_settings(Path(__file__).parents[2] / "conf" / "vnode.yaml", {})
    assert (sample.server.local_api_address, sample.server.local_api_port) == ("127.0.0.1", 10350)
    flags = load_settings(None, {"--local-api-port": "0", "--local-api-address": "0.0.0.0"})
    assert (flags.server.local_api_address, flags.server.local_api_port) == ("0.0.0.0", 0)
    with pytest.raises(errors.ConfigError, match="--local-api-port"):
        load_settings(None, {"--local-api-port": "70000"})


async def test_a_watch_whose_client_left_ends_while_nothing_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp does not cancel the handler of a closed connection: the watch notices by itself,
    so silent watches do not pile up connections and queues (found by the fuzzer's fd count)."""
    monkeypatch.setattr(server, "CLIENT_CHECK", 0.05)
    pods = FakePods(tmp_path / "0.log")
    pods.change(make_pod("a"))
    node = local.minimal_node("edge-1", "192.0.2.1", {}, None, "2026-11-24T10:00:00Z", "v1")
    app = local.LocalApi(local.LocalSources(pods, lambda: node, local.EmptyObjects(), TOKEN, "v1"))
    async with serving(app.app) as base:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            resp = await session.get(f"{base}/api/v1/pods?watch=true")
            assert yaml.safe_load(await resp.content.readline())["type"] == "ADDED"
            assert len(app.history._watchers) == 1
            resp.close()

        async def unsubscribed() -> bool:
            return not app.history._watchers

        await wait_for(unsubscribed, timeout=10, interval=0.02, what="the watch to notice its client left")
