"""``vnode certs``: a dev CA, admin and break-glass client certificates, and what is installed.

- ``vnode certs ca --dir DIR``: a self-signed CA (``ca.crt``, ``ca.key`` 0600) for a lab cluster,
  and its discovery pin (what ``vnode join --discovery-token-ca-cert-hash`` takes). An existing CA
  is never overwritten.
- ``vnode certs issue admin --ca-dir DIR --out DIR [--server URL]``: a cluster client certificate
  signed directly by the CA in ``DIR``, in group ``system:masters``, for a year.
- ``vnode certs issue break-glass --out DIR [--root-dir DIR]``: the operator's certificate for the
  node itself when the control plane (or its authentication) is what is broken: signed by the
  node's local CA (``<root>/pki/local-ca.key``) in group ``vnode:break-glass``, which the kubelet
  API and the local API authorize locally (``vnode.security.localca``), for an hour.
  A kubeconfig is written too when ``--server`` is given. Keys are 0600.
- ``vnode certs show [--root-dir DIR]``: the node's client and serving certificates (issued,
  self-signed), their subjects and expiry, and a serving CSR waiting for approval.

These commands are short-lived, so they import ``cryptography`` (through ``vnode.security.keys``)
directly; the node itself never does.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from vnode.config.settings import Settings
from vnode.security.files import write_file
from vnode.security.localca import BREAK_GLASS_GROUP, LocalPki

ROTATION_STATE = "rotation.json"  # written by vnode.security.rotation beside the certificates


def add_parser(commands: Any) -> None:
    certs = commands.add_parser("certs", help="dev CA, admin/break-glass certificates, what is installed")
    sub = certs.add_subparsers(dest="certs_command", required=True)
    ca = sub.add_parser("ca", help="create a dev CA and print its discovery pin")
    ca.add_argument("--dir", type=Path, required=True)
    ca.add_argument("--name", default="vnode-dev-ca")
    ca.add_argument("--days", type=int, default=3650)
    issue = sub.add_parser("issue", help="issue a system:masters client certificate from the CA")
    issue.add_argument("kind", choices=("admin", "break-glass"))
    issue.add_argument("--ca-dir", type=Path, help="the CA of an admin certificate (ca.crt, ca.key)")
    issue.add_argument(
        "--root-dir", type=Path, default=Settings().root_dir, help="the node's, for break-glass"
    )
    issue.add_argument("--out", type=Path, required=True)
    issue.add_argument("--name", help="the user (CN); default vnode-admin or break-glass-<time>")
    issue.add_argument("--hours", type=float, help="validity; default 8760 (admin) or 1 (break-glass)")
    issue.add_argument("--server", help="also write <out>/<name>.kubeconfig for this API server URL")
    show = sub.add_parser("show", help="show the installed certificates and when they expire")
    show.add_argument("--root-dir", type=Path, default=Settings().root_dir)


def main(args: argparse.Namespace) -> int:
    try:
        if args.certs_command == "ca":
            return _ca(args)
        if args.certs_command == "issue":
            return _issue(args)
        return _show(args.root_dir)
    except (OSError, ValueError) as exc:
        print(f"vnode certs: {exc}", file=sys.stderr)
        return 1


def _ca(args: argparse.Namespace) -> int:
    from vnode.security import keys

    cert_path, key_path = args.dir / "ca.crt", args.dir / "ca.key"
    if cert_path.exists() or key_path.exists():
        print(f"vnode certs: {cert_path} or {key_path} exists; not overwriting a CA", file=sys.stderr)
        return 1
    cert, key = keys.new_ca(args.name, dt.timedelta(days=args.days))
    write_file(key_path, key)
    write_file(cert_path, cert)
    cert_path.chmod(0o644)
    print(f"CA {cert_path} (key {key_path}), valid {args.days} days")
    print(f"--discovery-token-ca-cert-hash {keys.pins(cert)[0]}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    from vnode.security import keys

    admin = args.kind == "admin"
    name = args.name or ("vnode-admin" if admin else f"break-glass-{time.strftime('%Y%m%d%H%M%S')}")
    hours = args.hours if args.hours is not None else (8760.0 if admin else 1.0)
    if admin:
        if args.ca_dir is None:
            raise ValueError("--ca-dir is required for an admin certificate")
        ca_cert, ca_key, groups = args.ca_dir / "ca.crt", args.ca_dir / "ca.key", ["system:masters"]
    else:
        local = LocalPki(Settings(root_dir=args.root_dir).pki_dir)  # made by the node at its first start
        ca_cert, ca_key, groups = local.ca_cert, local.ca_key, [BREAK_GLASS_GROUP]
    ca_pem = ca_cert.read_bytes()
    cert, key = keys.issue(ca_pem, ca_key.read_bytes(), name, groups, dt.timedelta(hours=hours))
    cert_path, key_path = args.out / f"{name}.crt", args.out / f"{name}.key"
    write_file(key_path, key)
    write_file(cert_path, cert)
    facts = keys.describe(cert)
    print(f"{args.kind} certificate {cert_path} (key {key_path}) for {facts['subject']}")
    print(f"expires {_when(facts['notAfter'])}")
    if args.server:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "cluster",
                    "cluster": {"server": args.server, "certificate-authority-data": _b64(ca_pem)},
                }
            ],
            "users": [
                {"name": name, "user": {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}}
            ],
            "contexts": [{"name": name, "context": {"cluster": "cluster", "user": name}}],
            "current-context": name,
        }
        path = args.out / f"{name}.kubeconfig"
        write_file(path, yaml.safe_dump(config, sort_keys=False).encode())
        print(f"kubeconfig {path}")
    return 0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _when(timestamp: float) -> str:
    left = timestamp - time.time()
    stamp = dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if left <= 0:
        return f"{stamp} (EXPIRED {_span(-left)} ago)"
    return f"{stamp} (in {_span(left)})"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _show(root_dir: Path) -> int:
    from vnode.security import keys

    pki = root_dir / "pki"
    found = False
    for label, path in (
        ("client", pki / "kubelet-client-current.pem"),
        ("serving (issued)", pki / "kubelet-server-current.pem"),
        ("serving (self-signed)", pki / "kubelet.crt"),
    ):
        if not path.exists():
            continue
        found = True
        facts = keys.describe(path.read_bytes())
        target = f" -> {path.resolve().name}" if path.is_symlink() else ""
        print(f"{label}: {path}{target}")
        print(f"  subject {facts['subject']}, issuer {facts['issuer']}")
        if facts["dns"] or facts["ips"]:
            print(f"  names {', '.join(facts['dns'] + facts['ips'])}")
        print(f"  expires {_when(facts['notAfter'])}")
    for line in status_lines(root_dir):
        print(line)
    if not found:
        print(f"no certificates under {pki}")
        return 1
    return 0


def status_lines(root_dir: Path) -> list[str]:
    """What rotation last recorded: pending CSRs and renewal deadlines (for ``vnode status``)."""
    try:
        state = json.loads((root_dir / "pki" / ROTATION_STATE).read_text())
    except (OSError, ValueError):
        return []
    lines = []
    for kind in ("client", "serving"):
        entry = state.get(kind) or {}
        if entry.get("pending"):
            since = dt.datetime.fromtimestamp(entry.get("since", 0), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            lines.append(
                f"{kind} certificate: CSR {entry['pending']} waiting for approval since {since}"
                + (
                    " (kubelet-serving CSRs are not auto-approved: kubectl certificate approve)"
                    if kind == "serving"
                    else ""
                )
            )
        elif entry.get("renewAt"):
            lines.append(f"{kind} certificate: renewal due {_when(entry['renewAt'])}")
    return lines
