#!/usr/bin/env bash
# Runs a standalone vnode (no control plane) with the sample static pod from conf/manifests.
# As root on a fresh Debian machine: sets up packages and .venv, makes sure a containerd is
# serving on /run/containerd/containerd.sock (the system's, or one started here with
# conf/containerd.toml when no service manager runs it), imports the locally built busybox
# and pause images (no registry is needed), then runs the node in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

# Pod networking for pods without hostNetwork, unless the machine already has a CNI config.
if [ -z "$(ls -A /etc/cni/net.d 2>/dev/null)" ]; then
    install -D -m 0644 conf/cni/10-vnode.conflist /etc/cni/net.d/10-vnode.conflist
fi

sock=/run/containerd/containerd.sock
if ! ctr --address "$sock" version >/dev/null 2>&1; then
    if [ -d /run/systemd/system ] && systemctl list-unit-files containerd.service >/dev/null 2>&1; then
        systemctl enable --now containerd
    else
        echo "run: starting containerd (log: /var/log/vnode-containerd.log)"
        mkdir -p /etc/vnode
        install -m 0644 conf/containerd.toml /etc/vnode/containerd.toml
        # A session of its own: Ctrl-C on this script (or vnode stopping) never stops the runtime,
        # and the containers it runs keep running.
        setsid nohup containerd --config /etc/vnode/containerd.toml >/var/log/vnode-containerd.log 2>&1 &
    fi
    for _ in $(seq 100); do
        ctr --address "$sock" version >/dev/null 2>&1 && break
        sleep 0.1
    done
fi
.venv/bin/python -m integration.images import --address "$sock"
exec .venv/bin/vnode run --config conf/vnode.yaml "$@"
