"""A real Kubernetes control plane for the tests, configured the way kubeadm configures one.

One etcd; one to three kube-apiservers over it on loopback ports (``--authorization-mode=
Node,RBAC``, ``NodeRestriction``, bootstrap-token authentication, a kubelet client certificate and
the cluster CA to verify kubelets with, service-account keys, the aggregation layer's front proxy);
kube-controller-manager with the cluster signing CA, ``bootstrapsigner``/``tokencleaner``, CSR
approval and signing, node lifecycle, ReplicaSets/Deployments and service accounts; kube-scheduler;
and the objects ``kubeadm init`` creates for joining (bootstrap token, ``cluster-info``, the RBAC that
lets bootstrappers create and auto-approve client CSRs and nodes renew theirs).

The binaries come from ``scripts/build-kube.sh`` (built from their Go modules, cached per machine).
Everything listens on 127.0.0.1 and lives under one directory; ``stop`` ends every process, also
SIGSTOPped ones. The controller-manager and the scheduler talk to the last API server, so tests may
kill or freeze the others (a node uses the first one first) without blinding the controllers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import socket
import ssl
import string
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from integration.kube.pki import ClusterPki

REPO = Path(__file__).resolve().parents[2]
# The group kubeadm's default bootstrap tokens carry: allowed to create client CSRs, auto-approved.
DEFAULT_NODE_TOKEN_GROUP = "system:bootstrappers:kubeadm:default-node-token"
VERSION = "1.37.2"


def binaries() -> Path:
    """The directory of the built binaries; builds them when this machine has none yet."""
    out = subprocess.run(
        [str(REPO / "scripts" / "build-kube.sh")], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return Path(out.strip().splitlines()[-1]) / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubeconfig(
    path: Path,
    servers: list[str],
    ca: Path,
    cert: Path | None = None,
    key: Path | None = None,
    token: str | None = None,
) -> Path:
    """A kubeconfig with one context per server, all for one user (the first is current): the
    shape vnode reads its list of masters from."""
    user: dict[str, str] = {}
    if cert is not None and key is not None:
        user = {"client-certificate": str(cert), "client-key": str(key)}
    if token is not None:
        user = {"token": token}
    names = [f"m{i}" for i in range(len(servers))]
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": names[0],
        "clusters": [
            {"name": n, "cluster": {"server": s, "certificate-authority": str(ca)}}
            for n, s in zip(names, servers, strict=True)
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": n, "context": {"cluster": n, "user": "user"}} for n in names],
    }
    path.write_text(json.dumps(doc, indent=1))
    path.chmod(0o600)
    return path


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    stopped: bool = False

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(self.argv, stdout=log, stderr=log, start_new_session=True)
        self.stopped = False

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(sig)
            self.stopped = sig == signal.SIGSTOP

    def end(self) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        if self.stopped:
            self.popen.send_signal(signal.SIGCONT)
        self.popen.terminate()
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class KubeCluster:
    """A running control plane: ``start()`` once, ``stop()`` always (a ``with`` does both)."""

    base: Path
    masters: int = 1
    node_monitor_grace_period: str = "40s"
    cluster_signing_duration: str = "8760h"
    audit: bool = False  # every request recorded (metadata only), for counting a client's requests
    bin: Path = field(default_factory=binaries)
    procs: dict[str, Proc] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)
    token: str = ""

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.logs = self.base / "logs"
        self.logs.mkdir(exist_ok=True)
        self.pki = ClusterPki(self.base / "pki")
        self.ports = [free_port() for _ in range(self.masters)]
        alphabet = string.ascii_lowercase + string.digits
        self.token = (
            "".join(secrets.choice(alphabet) for _ in range(6))
            + "."
            + "".join(secrets.choice(alphabet) for _ in range(16))
        )
        self.admin_kubeconfig = kubeconfig(
            self.base / "admin.kubeconfig", self.urls, self.pki.ca.cert, *self.pki.admin
        )

    # -- what tests and people use ----------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [f"https://127.0.0.1:{p}" for p in self.ports]

    @property
    def ca_cert(self) -> Path:
        return self.pki.ca.cert

    @property
    def ca_hash(self) -> str:
        return self.pki.ca.pin()

    def kubectl_argv(self, *args: str, kubeconfig_path: Path | None = None) -> list[str]:
        return [
            str(self.bin / "kubectl"),
            "--kubeconfig",
            str(kubeconfig_path or self.admin_kubeconfig),
            *args,
        ]

    def kubectl_sync(
        self, *args: str, check: bool = True, stdin: bytes | None = None, timeout: float = 90
    ) -> str:
        done = subprocess.run(self.kubectl_argv(*args), input=stdin, capture_output=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.decode()}"
            )
        return done.stdout.decode()

    async def kubectl(
        self,
        *args: str,
        check: bool = True,
        stdin: bytes | None = None,
        timeout: float = 90,
        kubeconfig_path: Path | None = None,
    ) -> str:
        code, out, err = await self.kubectl_status(
            *args, stdin=stdin, timeout=timeout, kubeconfig_path=kubeconfig_path
        )
        if check and code != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({code}): {err}")
        return out

    async def kubectl_status(
        self, *args: str, stdin: bytes | None = None, timeout: float = 90, kubeconfig_path: Path | None = None
    ) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *self.kubectl_argv(*args, kubeconfig_path=kubeconfig_path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"kubectl {' '.join(args)} did not finish within {timeout}s") from None
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def get_json(self, *args: str) -> dict[str, object]:
        out = await self.kubectl("get", *args, "-o", "json")
        result: dict[str, object] = json.loads(out)
        return result

    def node_kubeconfig(self, name: str, servers: list[str] | None = None) -> Path:
        """A kubeconfig with the node's own credential (``system:node:<name>``), listing every
        master unless told otherwise."""
        (cert, key), _ = self.pki.node(name)
        return kubeconfig(
            self.base / f"node-{name}.kubeconfig", servers or self.urls, self.ca_cert, cert, key
        )

    def node_args(self, name: str, servers: list[str] | None = None) -> list[str]:
        """What a node of this cluster runs with, as a kubeadm-joined kubelet would have it: its
        credential, the cluster CA for the API server's kubelet client, and a serving
        certificate the API server verifies."""
        _, (serving, serving_key) = self.pki.node(name)
        return [
            f"--kubeconfig={self.node_kubeconfig(name, servers)}",
            f"--client-ca-file={self.ca_cert}",
            f"--tls-cert-file={serving}",
            f"--tls-private-key-file={serving_key}",
        ]

    def apiserver(self, index: int) -> Proc:
        return self.procs[f"kube-apiserver-{index}"]

    def kill_master(self, index: int) -> None:
        self.apiserver(index).signal(signal.SIGKILL)

    def freeze_master(self, index: int) -> None:
        self.apiserver(index).signal(signal.SIGSTOP)

    def thaw_master(self, index: int) -> None:
        self.apiserver(index).signal(signal.SIGCONT)

    def restart_master(self, index: int) -> None:
        proc = self.apiserver(index)
        proc.end()
        proc.start()
        self._wait_ready(index)

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> KubeCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.procs[name].end()

    def _spawn(self, name: str, argv: list[str]) -> Proc:
        proc = Proc(name, argv, self.logs / f"{name}.log")
        self.procs[name] = proc
        proc.start()
        return proc

    def _start(self) -> None:
        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd = self._spawn(
            "etcd",
            [
                str(self.bin / "etcd"),
                "--name=default",
                f"--data-dir={self.base / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._poll(lambda: self._http_ok(f"{etcd_url}/health"), etcd, "etcd /health")
        for i in range(self.masters):
            self._spawn(f"kube-apiserver-{i}", self._apiserver_argv(i, etcd_url))
        for i in range(self.masters):
            self._wait_ready(i)
        last = [self.urls[-1]]
        kcm = kubeconfig(
            self.base / "controller-manager.kubeconfig", last, self.ca_cert, *self.pki.controller_manager
        )
        sched = kubeconfig(self.base / "scheduler.kubeconfig", last, self.ca_cert, *self.pki.scheduler)
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin / "kube-controller-manager"),
                f"--kubeconfig={kcm}",
                f"--authentication-kubeconfig={kcm}",
                f"--authorization-kubeconfig={kcm}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--controllers=*,bootstrapsigner,tokencleaner",
                f"--cluster-signing-cert-file={self.ca_cert}",
                f"--cluster-signing-key-file={self.pki.ca.key}",
                f"--cluster-signing-duration={self.cluster_signing_duration}",
                f"--root-ca-file={self.ca_cert}",
                f"--service-account-private-key-file={self.pki.sa_key}",
                "--use-service-account-credentials=true",
                f"--client-ca-file={self.ca_cert}",
                f"--requestheader-client-ca-file={self.pki.front_proxy.cert}",
                f"--node-monitor-grace-period={self.node_monitor_grace_period}",
                "--node-monitor-period=2s",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allocate-node-cidrs=false",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin / "kube-scheduler"),
                f"--kubeconfig={sched}",
                f"--authentication-kubeconfig={sched}",
                f"--authorization-kubeconfig={sched}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
            ],
        )
        self.kubectl_sync("apply", "-f", "-", stdin=self._join_objects().encode())
        deadline = time.monotonic() + 120
        while True:  # the bootstrap signer has signed cluster-info; pods can get the default SA
            info = self.kubectl_sync("-n", "kube-public", "get", "configmap", "cluster-info", "-o", "json")
            signed = any(k.startswith("jws-kubeconfig-") for k in json.loads(info).get("data", {}))
            sa = self.kubectl_sync("-n", "default", "get", "serviceaccount", "default", check=False)
            if signed and sa:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "controllers did not sign cluster-info or create the default service account:\n"
                    + self.procs["kube-controller-manager"].tail()
                )
            time.sleep(0.5)

    def _apiserver_argv(self, index: int, etcd_url: str) -> list[str]:
        p = self.pki
        return [
            str(self.bin / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports[index]}",
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",  # several servers on one address: no shared endpoint
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--client-ca-file={p.ca.cert}",
            "--enable-bootstrap-token-auth=true",
            f"--tls-cert-file={p.apiserver[0]}",
            f"--tls-private-key-file={p.apiserver[1]}",
            f"--kubelet-client-certificate={p.kubelet_client[0]}",
            f"--kubelet-client-key={p.kubelet_client[1]}",
            f"--kubelet-certificate-authority={p.ca.cert}",
            "--kubelet-preferred-address-types=InternalIP",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p.sa_pub}",
            f"--service-account-signing-key-file={p.sa_key}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--allow-privileged=true",
            f"--requestheader-client-ca-file={p.front_proxy.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={p.front_proxy_client[0]}",
            f"--proxy-client-key-file={p.front_proxy_client[1]}",
            "--enable-aggregator-routing=true",
            "--profiling=false",
            f"--cert-dir={self.base / f'apiserver-{index}'}",
            *(self._audit_args(index) if self.audit else []),
        ]

    def _audit_args(self, index: int) -> list[str]:
        policy = self.base / "audit-policy.json"
        policy.write_text(json.dumps({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata"}],
        }))  # fmt: skip
        return [
            f"--audit-policy-file={policy}", f"--audit-log-path={self.logs / f'audit-{index}.log'}",
            "--audit-log-format=json", "--audit-log-mode=blocking",
        ]  # fmt: skip

    def requests_of(self, user: str) -> dict[str, int]:
        """What ``user`` has asked of the API servers so far, by ``verb resource[/subresource]``,
        read from the audit logs (each request once, a watch when it starts)."""
        seen: set[str] = set()
        counts: dict[str, int] = {}
        for log in sorted(self.logs.glob("audit-*.log")):
            for line in log.read_text(errors="replace").splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if event.get("user", {}).get("username") != user or event["auditID"] in seen:
                    continue
                seen.add(event["auditID"])
                ref = event.get("objectRef") or {}
                resource = ref.get("resource", event.get("requestURI", "?"))
                if ref.get("subresource"):
                    resource += "/" + ref["subresource"]
                key = f"{event['verb']} {resource}"
                counts[key] = counts.get(key, 0) + 1
        return counts

    def _join_objects(self) -> str:
        token_id, token_secret = self.token.split(".")
        group = DEFAULT_NODE_TOKEN_GROUP
        cluster_info = json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "preferences": {},
                "users": None,
                "contexts": None,
                "clusters": [
                    {
                        "name": "",
                        "cluster": {
                            "server": self.urls[0],
                            "certificate-authority-data": base64.b64encode(
                                self.ca_cert.read_bytes()
                            ).decode(),
                        },
                    }
                ],
            }
        )
        expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))

        def binding(
            name: str, role: str, kind: str, subject: str, namespace: str | None = None
        ) -> dict[str, object]:
            meta: dict[str, str] = {"name": name}
            if namespace:
                meta["namespace"] = namespace
            return {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding" if namespace else "ClusterRoleBinding",
                "metadata": meta,
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role" if namespace else "ClusterRole",
                    "name": role,
                },
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": subject}],
            }

        items: list[dict[str, object]] = [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "bootstrap.kubernetes.io/token",
                "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
                "stringData": {
                    "token-id": token_id,
                    "token-secret": token_secret,
                    "expiration": expiration,
                    "usage-bootstrap-authentication": "true",
                    "usage-bootstrap-signing": "true",
                    "auth-extra-groups": group,
                },
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "cluster-info", "namespace": "kube-public"},
                "data": {"kubeconfig": cluster_info},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "kubeadm:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["configmaps"],
                        "resourceNames": ["cluster-info"],
                        "verbs": ["get"],
                    }
                ],
            },
            binding(
                "kubeadm:bootstrap-signer-clusterinfo",
                "kubeadm:bootstrap-signer-clusterinfo",
                "User",
                "system:anonymous",
                "kube-public",
            ),
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "kubeadm:get-nodes"},
                "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}],
            },
            binding("kubeadm:get-nodes", "kubeadm:get-nodes", "Group", group),
            binding("kubeadm:kubelet-bootstrap", "system:node-bootstrapper", "Group", group),
            binding(
                "kubeadm:node-autoapprove-bootstrap",
                "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
                "Group",
                group,
            ),
            binding(
                "kubeadm:node-autoapprove-certificate-rotation",
                "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
                "Group",
                "system:nodes",
            ),
            binding(
                "kube-apiserver-kubelet-client",
                "system:kubelet-api-admin",
                "User",
                "kube-apiserver-kubelet-client",
            ),
        ]
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})

    def _wait_ready(self, index: int) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        ctx.load_cert_chain(*self.pki.admin)
        self._poll(
            lambda: self._http_ok(f"{self.urls[index]}/readyz", ctx), self.apiserver(index), "/readyz", 180
        )

    @staticmethod
    def _http_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5, context=ctx) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    @staticmethod
    def _poll(check: object, proc: Proc, what: str, timeout: float = 60) -> None:
        assert callable(check)
        deadline = time.monotonic() + timeout
        while not check():
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name}: no {what} within {timeout}s:\n{proc.tail()}")
            time.sleep(0.2)


def env_with_kubectl(bin_dir: Path) -> dict[str, str]:
    """The environment with the built kubectl first on PATH."""
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
