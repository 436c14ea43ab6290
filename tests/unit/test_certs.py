"""``vnode certs``: the dev CA, an admin certificate that chains to it (checked by openssl), the
pin printed for join, key modes, and no CA ever overwritten."""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from vnode.cli import main
from vnode.security import keys, profiles

ROOT = Path(__file__).resolve().parents[2]


def test_ca_admin_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir, out = tmp_path / "ca", tmp_path / "out"
    assert main(["certs", "ca", "--dir", str(ca_dir)]) == 0
    printed = capsys.readouterr().out
    assert keys.pins((ca_dir / "ca.crt").read_bytes())[0] in printed
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    assert main(["certs", "ca", "--dir", str(ca_dir)]) == 1  # never overwritten

    assert (
        main(
            [
                "certs",
                "issue",
                "admin",
                "--ca-dir",
                str(ca_dir),
                "--out",
                str(out),
                "--server",
                "https://h:6443",
            ]
        )
        == 0
    )
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_dir / "ca.crt"), str(out / "vnode-admin.crt")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    subject = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", str(out / "vnode-admin.crt")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "O=system:masters" in subject and "CN=vnode-admin" in subject
    for name in ("vnode-admin.key", "vnode-admin.kubeconfig"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    config = yaml.safe_load((out / "vnode-admin.kubeconfig").read_text())
    assert config["clusters"][0]["cluster"]["server"] == "https://h:6443"

    capsys.readouterr()
    assert main(["certs", "show", "--root-dir", str(tmp_path / "nothing")]) == 1
    assert "no certificates" in capsys.readouterr().out


def test_break_glass_is_signed_by_the_nodes_local_ca_and_recognised(tmp_path: Path) -> None:
    """``vnode certs issue break-glass`` makes exactly what the kubelet API authorizes locally."""
    import ssl

    from vnode.config.settings import Settings
    from vnode.security.authn import x509_user
    from vnode.security.localca import LocalPki, generate, local_ca_name

    root, out = tmp_path / "root", tmp_path / "out"
    pki = LocalPki(Settings(root_dir=root).pki_dir)
    pki.dir.mkdir(parents=True)
    generate(pki, "edge-1")  # what the node does at its first start
    assert main(["certs", "issue", "break-glass", "--name", "operator", "--out", str(out),
                 "--root-dir", str(root)]) == 0  # fmt: skip
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki.ca_cert), str(out / "operator.crt")],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert stat.S_IMODE((out / "operator.key").stat().st_mode) == 0o600
    peer = ssl._ssl._test_decode_cert(str(out / "operator.crt"))  # type: ignore[attr-defined]
    user = x509_user(peer, local_ca_name(pki))
    assert (user.name, user.full_access) == ("operator", True)
    assert (
        main(["certs", "issue", "break-glass", "--out", str(out), "--root-dir", str(tmp_path / "none")]) == 1
    )


def _extensions(pem: bytes) -> dict[str, Any]:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem)
    found: dict[str, Any] = {}
    for ext in cert.extensions:
        value = ext.value
        if isinstance(value, x509.BasicConstraints):
            found["ca"] = (value.ca, ext.critical)
        elif isinstance(value, x509.KeyUsage):
            found["key_usage"] = {n for n in keys.KEY_USAGES[:7] if getattr(value, n)}
        elif isinstance(value, x509.ExtendedKeyUsage):
            found["eku"] = {oid.dotted_string for oid in value}
    return found


def test_the_openssl_recipe_in_certs_makes_what_the_profiles_make(tmp_path: Path) -> None:
    """certs/openssl.cnf is the client-ca and issued-client profiles for openssl: the recipe in
    certs/README.md and ``vnode certs`` make certificates with the same extensions."""
    cnf = str(ROOT / "certs" / "openssl.cnf")
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    run("req", "-x509", "-new", *curve, "-days", "30", "-subj", "/CN=site-ca", "-config", cnf,
        "-extensions", "client_ca", "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    run("req", "-new", *curve, "-subj", "/O=ops/CN=alice", "-keyout", "alice.key", "-out", "alice.csr")
    run("x509", "-req", "-in", "alice.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-extfile", cnf, "-extensions", "issued_client", "-out", "alice.crt")  # fmt: skip
    ca_pem, ca_key = keys.new_ca("site-ca", dt.timedelta(days=30))
    issued, _ = keys.issue(ca_pem, ca_key, "alice", ["ops"], dt.timedelta(hours=1))
    assert _extensions((tmp_path / "ca.crt").read_bytes()) == _extensions(ca_pem)
    assert _extensions((tmp_path / "alice.crt").read_bytes()) == _extensions(issued)
    assert (ROOT / "certs" / "profiles.toml").resolve() == profiles.PATH.resolve()  # the file vnode reads
