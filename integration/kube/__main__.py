"""``python -m integration.kube up --masters 3 --dir DIR --kubeconfig-out FILE [--metrics-server]``:
a real cluster in the foreground until SIGTERM or Ctrl-C, for people and for checks outside the
test suite."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from integration.kube.cluster import KubeCluster
from integration.kube.metrics import MetricsServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.kube")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster and keep it up until SIGTERM")
    up.add_argument("--masters", type=int, default=1, choices=(1, 2, 3))
    up.add_argument("--dir", type=Path, help="where its state and logs live (default: a temp dir, removed)")
    up.add_argument("--kubeconfig-out", type=Path, help="copy the admin kubeconfig here")
    up.add_argument("--node-monitor-grace-period", default="40s")
    up.add_argument("--cluster-signing-duration", default="8760h")
    up.add_argument(
        "--metrics-server",
        action="store_true",
        help="also run metrics-server (kubectl top); it verifies nodes' serving certificates "
        "with the cluster CA (a node joined with --rotate-server-certificates, CSR approved)",
    )
    args = parser.parse_args(argv)

    base = args.dir or Path(tempfile.mkdtemp(prefix="vnode-kube-"))
    cluster = KubeCluster(
        base,
        masters=args.masters,
        node_monitor_grace_period=args.node_monitor_grace_period,
        cluster_signing_duration=args.cluster_signing_duration,
    )
    # Blocked before anything starts, so a signal arriving at any moment ends the wait below.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    metrics = None
    try:
        cluster.start()
        if args.metrics_server:
            metrics = MetricsServer(cluster, base / "metrics-server")
            asyncio.run(metrics.start())
            print(f"metrics-server: https://{metrics.address}:{metrics.port} (log {metrics.base})")
        if args.kubeconfig_out:
            shutil.copyfile(cluster.admin_kubeconfig, args.kubeconfig_out)
        print(f"api servers: {','.join(cluster.urls)}")
        print(f"admin kubeconfig: {args.kubeconfig_out or cluster.admin_kubeconfig}")
        print(f"kubectl: {cluster.bin / 'kubectl'}")
        print(
            f"join: vnode join {','.join(cluster.urls)} --token {cluster.token} "
            f"--discovery-token-ca-cert-hash {cluster.ca_hash}"
        )
        print("ready", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        if metrics is not None:
            asyncio.run(metrics.stop())
        cluster.stop()
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
