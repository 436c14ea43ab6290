"""``vnode join`` against a real control plane: discovery, TLS bootstrap, refusals, rotation.

The module runs its own cluster (``integration/kube``) whose controller-manager signs certificates
for two minutes, so that rotation happens within a test; bootstrap tokens, ``cluster-info`` and
its signature, CSR auto-approval and signing are the real controllers'. The CA pin is computed
with the real openssl, as kubeadm's docs do it; serving CSRs are approved with the real
``kubectl certificate approve``; the node is a real ``vnode join`` process on the session's
containerd.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import secrets
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from integration.kube import KubeCluster
from integration.kube.cluster import DEFAULT_NODE_TOKEN_GROUP
from integration.kube.view import ClusterView
from integration.node import VnodeProcess, busybox_pod, wait_for

SIGNING_SECONDS = 120
POD = """
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  nodeName: joined1
  hostNetwork: true
  terminationGracePeriodSeconds: 2
  containers:
    - name: main
      image: docker.io/library/busybox:1.35
      command: [sh, -c, "trap 'exit 0' TERM; echo started; sleep 3600 & wait"]
"""


def token_secret(token_id: str, secret: str, **extra: str) -> bytes:
    data = {
        "token-id": token_id,
        "token-secret": secret,
        "usage-bootstrap-authentication": "true",
        "usage-bootstrap-signing": "true",
        **extra,
    }
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
    return json.dumps(body).encode()


def ca_pin(ca_cert: Path) -> str:
    """kubeadm's documented recipe: openssl x509 -pubkey | openssl pkey -pubin -outform der | sha256."""
    pubkey = subprocess.run(
        ["openssl", "x509", "-in", str(ca_cert), "-pubkey", "-noout"], capture_output=True, check=True
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=pubkey, capture_output=True, check=True
    ).stdout
    digest = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hex"], input=der, capture_output=True, check=True
    )
    return "sha256:" + digest.stdout.decode().split()[-1]


class JoiningNode(VnodeProcess):
    """``vnode join <servers> --token ...`` instead of ``vnode run``, with the same node flags."""

    def __init__(self, base: Path, endpoint: str, join_args: list[str], **kwargs: Any) -> None:
        super().__init__(base, endpoint, **kwargs)
        self.join_args = join_args

    def args(self) -> list[str]:
        args = super().args()
        at = args.index("run")
        return [*args[:at], "join", *self.join_args, *args[at + 1 :]]


@pytest.fixture(scope="module")
def join_kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """A cluster of this module's own: one API server, certificates signed for two minutes."""
    base = tmp_path_factory.mktemp("join-kube")
    with KubeCluster(base, masters=1, cluster_signing_duration=f"{SIGNING_SECONDS}s") as cluster:
        yield cluster


@pytest.fixture
async def plane(join_kube: KubeCluster, request: pytest.FixtureRequest) -> AsyncIterator[ClusterView]:
    view = await ClusterView(join_kube, request.node.name).open()
    try:
        yield view
    finally:
        await view.close()


async def new_token(
    plane: ClusterView, group: str = DEFAULT_NODE_TOKEN_GROUP, **extra: str
) -> tuple[str, str]:
    """A bootstrap token of this test's own (id, secret), as ``kubeadm token create`` makes one;
    the bootstrap signer signs ``cluster-info`` with it within moments."""
    token_id, secret = secrets.token_hex(3), secrets.token_hex(8)
    body = token_secret(token_id, secret, **{"auth-extra-groups": group, **extra})
    await plane.kube.kubectl("apply", "-f", "-", stdin=body)
    return token_id, secret


async def csrs(plane: ClusterView, *usernames: str) -> list[dict[str, Any]]:
    """The CSRs made by these users (other tests share the cluster)."""
    items: list[dict[str, Any]] = json.loads(await plane.kube.kubectl("get", "csr", "-o", "json"))["items"]
    return [c for c in items if c["spec"]["username"] in usernames]


async def api_pod_running(plane: ClusterView, name: str) -> bool:
    out = await plane.kubectl("get", "pod", name, "-o", "json", check=False)
    statuses = (json.loads(out).get("status") or {}).get("containerStatuses") or [] if out else []
    return bool(statuses) and "running" in statuses[0]["state"]


def assert_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600, f"{path} has mode {oct(mode)}"


async def test_join_gets_a_client_certificate_registers_and_runs_a_pod(
    containerd: Any, plane: ClusterView, tmp_path: Path
) -> None:
    token_id, secret = await new_token(plane)
    pin = ca_pin(plane.kube.ca_cert)
    url = plane.urls[0]
    plane.nodes.add("joined1")
    node = JoiningNode(
        tmp_path,
        containerd.endpoint,
        [url, "--token", f"{token_id}.{secret}", "--discovery-token-ca-cert-hash", pin],
        node_name="joined1",
    )
    await node.start()
    try:
        await plane.kubectl("apply", "-f", "-", stdin=POD.encode())
        await wait_for(
            lambda: api_pod_running(plane, "web"), timeout=90, what="the pod to run on the joined node"
        )
        assert "Ready" in await plane.kubectl("get", "node", "joined1")

        (csr,) = await csrs(plane, f"system:bootstrap:{token_id}")
        assert csr["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
        assert "system:bootstrappers" in csr["spec"]["groups"]
        approved = {c["type"] for c in csr["status"]["conditions"]}
        assert "Approved" in approved  # by the controller-manager's approver, as kubeadm sets it up
        cert_pem = base64.b64decode(csr["status"]["certificate"])
        subject = await asyncio.to_thread(
            subprocess.run,
            ["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253"],
            input=cert_pem,
            capture_output=True,
            check=True,
        )
        assert "CN=system:node:joined1" in subject.stdout.decode()
        assert "O=system:nodes" in subject.stdout.decode()

        kubeconfig = node.root_dir / "kubelet.conf"
        current = node.root_dir / "pki" / "kubelet-client-current.pem"
        for path in (kubeconfig, current.resolve()):
            assert_private(path)
        assert cert_pem.strip() in current.read_bytes()
        config = kubeconfig.read_text()
        assert url in config and secret not in config  # the token is not kept
        took = re.search(r"joined: .*\((\d+\.\d+)s\)", node.log_tail(200))
        assert took is not None
        print(f"join took {took.group(1)}s (discovery, CSR, approval, issue)")
    finally:
        await node.terminate()


async def _refused(
    tmp_path: Path, plane: ClusterView, *args: str, name: str = "refused"
) -> tuple[int, str, Path]:
    root = tmp_path / name
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vnode",
        "join",
        plane.urls[0],
        *args,
        f"--root-dir={root}",
        "--hostname-override=refused1",
        "--discovery-timeout=3s",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode(), root


async def test_join_refuses_a_wrong_hash_or_token_and_writes_nothing(
    plane: ClusterView, tmp_path: Path
) -> None:
    token_id, secret = await new_token(plane)
    token = f"{token_id}.{secret}"
    pin = ca_pin(plane.kube.ca_cert)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    expired_id, expired_secret = await new_token(plane, expiration=when)
    wrong_pin = "sha256:" + "0" * 64
    cases = [
        (
            ["--token", token, "--discovery-token-ca-cert-hash", wrong_pin],
            1,
            "matches no --discovery-token-ca-cert-hash",
        ),
        (
            ["--token", f"{token_id}.ffffffffffffffff", "--discovery-token-ca-cert-hash", pin],
            1,
            "token is wrong",
        ),
        (
            ["--token", "unknwn.0123456789abcdef", "--discovery-token-ca-cert-hash", pin],
            1,
            "unknown, expired",
        ),
        (
            ["--token", f"{expired_id}.{expired_secret}", "--discovery-token-ca-cert-hash", pin],
            1,
            "unknown, expired",
        ),
        (["--token", "not-a-token", "--discovery-token-ca-cert-hash", pin], 2, "--token: expected"),
        (["--token", token], 2, "--discovery-token-ca-cert-hash: required"),
        (["--token", token, "--discovery-token-ca-cert-hash", "md5:abc"], 2, "is not sha256:"),
    ]
    for number, (args, code, message) in enumerate(cases):
        returncode, stderr, root = await _refused(tmp_path, plane, *args, name=f"case{number}")
        assert (returncode, message in stderr) == (code, True), f"{args}: {returncode} {stderr}"
        assert not root.exists(), f"{args}: {root} was written"
    # no CSR was created by any refused join
    assert await csrs(plane, f"system:bootstrap:{token_id}", f"system:bootstrap:{expired_id}") == []


async def _peer_serial(url: str, ca: Path) -> str:
    """The serial of the certificate a new TLS connection to ``url`` sees, verified by ``ca``."""
    context = ssl.create_default_context(cafile=str(ca))
    host, port = url.removeprefix("https://").split(":")
    _, writer = await asyncio.open_connection(host, int(port), ssl=context)
    try:
        cert = writer.get_extra_info("peercert")
        return str(cert["serialNumber"])
    finally:
        writer.close()
        await writer.wait_closed()


async def _approve_serving_renewals(plane: ClusterView, node: str) -> None:
    """What a site's serving-CSR approver does (Kubernetes has none): approve this node's
    kubelet-serving CSRs as they come."""
    while True:
        for csr in await csrs(plane, f"system:node:{node}"):
            if csr["spec"]["signerName"] == "kubernetes.io/kubelet-serving" and not csr.get("status"):
                await plane.kube.kubectl("certificate", "approve", csr["metadata"]["name"], check=False)
        await asyncio.sleep(2)


async def test_serving_certificate_waits_for_approval_then_rotates_live(
    containerd: Any, plane: ClusterView, tmp_path: Path
) -> None:
    """A 2-minute serving certificate (and client certificate), signed by the real controller-
    manager, is renewed before it expires; an open log stream and an exec session through the
    real API server survive the swap and new connections see the new certificate."""
    token_id, secret = await new_token(plane)
    pin = ca_pin(plane.kube.ca_cert)
    ca = plane.kube.ca_cert
    plane.nodes.add("joined1")
    node = JoiningNode(
        tmp_path,
        containerd.endpoint,
        [
            plane.urls[0],
            "--token",
            f"{token_id}.{secret}",
            "--discovery-token-ca-cert-hash",
            pin,
            "--rotate-server-certificates",
            f"--client-ca-file={ca}",
        ],
        node_name="joined1",
    )
    await node.start()
    session = None
    approver: asyncio.Task[None] | None = None
    try:
        # The serving CSR waits (Kubernetes does not approve kubelet-serving): log, Event, status.
        async def pending() -> dict[str, Any] | None:
            return next(
                (
                    c
                    for c in await csrs(plane, "system:node:joined1")
                    if c["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
                ),
                None,
            )

        serving = await wait_for(pending, what="a kubelet-serving CSR made with the node's own certificate")
        name = serving["metadata"]["name"]
        assert "waiting for approval" in node.log_tail(100)

        async def pending_event() -> bool:
            events = json.loads(await plane.kubectl("get", "events", "-A", "-o", "json"))["items"]
            return any(e.get("reason") == "ServingCertificatePending" for e in events)

        await wait_for(pending_event, what="the ServingCertificatePending Event")
        status = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "vnode", "status", f"--root-dir={node.root_dir}"],
            capture_output=True,
            text=True,
        )
        assert f"CSR {name} waiting for approval" in status.stdout, status.stdout + status.stderr
        with pytest.raises(ssl.SSLCertVerificationError):  # still the self-signed one
            await _peer_serial(node.url, ca)

        await plane.kube.kubectl("certificate", "approve", name)
        first = await wait_for(lambda: _peer_serial(node.url, ca), what="the issued serving certificate")
        issued_at = time.time()
        approver = asyncio.create_task(_approve_serving_renewals(plane, "joined1"))

        ticker = busybox_pod("ticker", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done")
        ticker["metadata"]["namespace"] = plane.namespace
        node.write_manifest("ticker.yaml", ticker)
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(*(str(p) for p in node.admin_cert))  # the node's local admin
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        logs = f"/containerLogs/{plane.namespace}/{node.static_name('ticker')}/main"
        await node.log_containing(node.static_name("ticker"), "main", b"tick 2", namespace=plane.namespace)
        stream = await session.get(
            f"{node.url}{logs}",
            params={"follow": "true"},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=30),
        )
        assert stream.status == 200
        transport = stream.connection.transport if stream.connection is not None else None
        assert transport is not None
        stream_serial = transport.get_extra_info("peercert")["serialNumber"]
        assert stream_serial == first

        # An exec session through the real API server (which verifies the node's serving
        # certificate against the cluster CA), opened on the first certificate.
        mirror = node.static_name("ticker")
        await wait_for(lambda: _in_api(plane, mirror), what="the ticker's mirror pod in the API")
        session_exec = await asyncio.create_subprocess_exec(
            *plane.kubectl_argv("exec", "-i", mirror, "--", "cat"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert session_exec.stdin is not None and session_exec.stdout is not None
        session_exec.stdin.write(b"before the swap\n")
        assert await asyncio.wait_for(session_exec.stdout.readline(), 30) == b"before the swap\n"

        async def renewed() -> str | None:
            serial = await _peer_serial(node.url, ca)
            return serial if serial != first else None

        second = await wait_for(
            renewed, timeout=SIGNING_SECONDS + 10, interval=1.0, what="the serving certificate to be renewed"
        )
        renewed_after = time.time() - issued_at
        print(f"serving certificate renewed {renewed_after:.0f}s into its {SIGNING_SECONDS}s life")
        assert renewed_after < SIGNING_SECONDS  # before it expired

        # The stream opened before the swap still flows, on its old connection: it delivers a
        # line written after a new connection saw the new certificate.
        _, log = await node.get(logs)
        last = max(int(n) for n in re.findall(rb"tick (\d+)", log))
        while True:
            line = await asyncio.wait_for(stream.content.readline(), 10)
            assert line, "the log stream ended at the certificate swap"
            if int(line.split()[-1]) > last:
                break
        assert transport.get_extra_info("peercert")["serialNumber"] == first != second
        stream.close()
        # ... and the exec session opened before the swap still carries stdin and stdout.
        session_exec.stdin.write(b"after the swap\n")
        assert await asyncio.wait_for(session_exec.stdout.readline(), 30) == b"after the swap\n"
        session_exec.stdin.close()
        assert await asyncio.wait_for(session_exec.wait(), 30) == 0

        for path in (node.root_dir / "pki").glob("kubelet-*.pem"):
            if not path.is_symlink():
                assert_private(path)

        async def client_renewed() -> bool:
            return any(
                c["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
                and (c.get("status") or {}).get("certificate")  # approved by the real approver
                for c in await csrs(plane, "system:node:joined1")  # renewed with its own certificate
            )

        await wait_for(
            client_renewed,
            timeout=SIGNING_SECONDS,
            interval=1.0,
            what="the 2-minute client certificate's renewal",
        )
        assert "Ready" in await plane.kubectl("get", "node", "joined1")
    finally:
        if approver is not None:
            approver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await approver
        if session is not None:
            await session.close()
        await node.terminate()


async def _in_api(plane: ClusterView, name: str) -> bool:
    return bool((await plane.kubectl("get", "pod", name, "-o", "name", check=False)).strip())


async def test_join_waits_while_its_csr_is_not_approved(plane: ClusterView, tmp_path: Path) -> None:
    """A token whose group may create client CSRs but is not auto-approved: the join waits with
    nothing written; an admin's ``kubectl certificate approve`` lets it complete."""
    group = f"system:bootstrappers:{plane.namespace}"
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": plane.namespace},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:node-bootstrapper",
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
    }
    await plane.kube.kubectl("apply", "-f", "-", stdin=json.dumps(binding).encode())
    token_id, secret = await new_token(plane, group=group)
    pin = ca_pin(plane.kube.ca_cert)
    plane.nodes.add("held1")
    node = JoiningNode(
        tmp_path,
        f"unix://{tmp_path}/no-containerd.sock",
        [plane.urls[0], "--token", f"{token_id}.{secret}", "--discovery-token-ca-cert-hash", pin],
        node_name="held1",
    )
    await node.start(wait=False)
    try:

        async def pending() -> list[dict[str, Any]]:
            return await csrs(plane, f"system:bootstrap:{token_id}")

        (csr,) = await wait_for(pending, what="the client CSR")
        assert not (csr.get("status") or {}).get("conditions")
        assert not (node.root_dir / "kubelet.conf").exists()
        assert node.proc is not None and node.proc.returncode is None

        await plane.kube.kubectl("certificate", "approve", csr["metadata"]["name"])
        await wait_for(node._healthy, what="the node to start once its CSR is issued")
        assert "held1" in await plane.kubectl("get", "nodes")
    finally:
        await plane.kube.kubectl("delete", "clusterrolebinding", plane.namespace, check=False)
        await node.terminate()
