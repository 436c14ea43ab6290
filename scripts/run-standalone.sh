#!/usr/bin/env bash
# Runs a standalone vnode (no control plane) with the sample static pod from conf/manifests.
# As root on a fresh Debian machine: sets up packages and .venv, makes sure a containerd is
# serving (the system's, or one started here when no service manager runs it), imports the
# locally built busybox and pause images (no registry is needed), then runs the node in the
# foreground. Arguments go to `vnode run` (after --config conf/vnode.yaml: they override it).
#
# The containerd this script starts runs in a session of its own: Ctrl-C here (or vnode stopping)
# stops vnode only; containerd and the containers keep running.
#
# Environment (all optional):
#   CONTAINERD_ADDRESS      containerd's socket (ctr's variable too); default
#                           /run/containerd/containerd.sock; vnode is pointed at it
#   CONTAINERD_SNAPSHOTTER  the snapshotter its CRI plugin uses, for the image import (ctr's
#                           variable too); default overlayfs
#   VNODE_CONTAINERD_CONFIG the config to start containerd with when none answers (and never the
#                           system service then); default conf/containerd.toml, installed as
#                           /etc/vnode/containerd.toml. Its CNI directory is yours to fill: the
#                           bridge config below goes to /etc/cni/net.d only without it
#   VNODE_CONTAINERD_LOG    the log of a containerd started here; default /var/log/vnode-containerd.log
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

sock=${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}
config=${VNODE_CONTAINERD_CONFIG:-}
log=${VNODE_CONTAINERD_LOG:-/var/log/vnode-containerd.log}

# Pod networking for pods without hostNetwork, unless the machine already has a CNI config.
if [ -z "$config" ] && [ -z "$(ls -A /etc/cni/net.d 2>/dev/null)" ]; then
    install -D -m 0644 conf/cni/10-vnode.conflist /etc/cni/net.d/10-vnode.conflist
fi

if ! ctr --address "$sock" version >/dev/null 2>&1; then
    if [ -z "$config" ] && [ -d /run/systemd/system ] &&
        systemctl list-unit-files containerd.service >/dev/null 2>&1; then
        systemctl enable --now containerd
    else
        if [ -z "$config" ]; then
            config=/etc/vnode/containerd.toml
            install -D -m 0644 conf/containerd.toml "$config"
        fi
        echo "run: starting containerd (config: $config, log: $log)"
        # A session of its own: Ctrl-C on this script (or vnode stopping) never stops the runtime,
        # and the containers it runs keep running.
        setsid nohup containerd --config "$config" --address "$sock" >>"$log" 2>&1 </dev/null &
    fi
    deadline=$((SECONDS + 60))
    until ctr --address "$sock" version >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            echo "run: containerd does not answer on $sock (log: $log)" >&2
            exit 1
        fi
        sleep 0.2
    done
fi
.venv/bin/python -m integration.images import --address "$sock" --snapshotter "${CONTAINERD_SNAPSHOTTER:-overlayfs}"
exec .venv/bin/vnode run --config conf/vnode.yaml --container-runtime-endpoint "unix://$sock" "$@"
