#!/usr/bin/env bash
# Installs vnode on this machine as a service, from this checkout (as root):
#   scripts/install.sh [--prefix /opt/vnode] [--bin-dir /usr/local/bin] [--config-dir /etc/vnode]
#                      [--unit-dir /etc/systemd/system]
# - the Debian packages vnode needs at run time (containerd, runc) when apt-get is there;
# - a virtualenv in PREFIX with vnode installed into it (pip; the package index is needed once);
# - BIN_DIR/vnode, a link to it, so `vnode status`, `vnode version`, `vnode join` work anywhere;
# - CONFIG_DIR/vnode.yaml from conf/vnode.yaml, unless one is there already (never overwritten);
# - UNIT_DIR/vnode.service from conf/vnode.service with these paths, and `systemctl daemon-reload`
#   when systemd runs. Start it with `systemctl enable --now vnode`.
# Upgrading is running it again from the newer checkout, then `systemctl restart vnode`: the
# containers keep running and are re-adopted. Nothing here touches the root dir (/var/lib/vnode).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=/opt/vnode bin_dir=/usr/local/bin config_dir=/etc/vnode unit_dir=/etc/systemd/system
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --bin-dir) bin_dir=$2; shift 2 ;;
        --config-dir) config_dir=$2; shift 2 ;;
        --unit-dir) unit_dir=$2; shift 2 ;;
        *) echo "install: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done

if command -v apt-get >/dev/null 2>&1; then
    missing=()
    for pkg in containerd runc python3-venv; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "install: apt-get install ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    fi
fi

echo "install: vnode into $prefix"
[ -x "$prefix/bin/python" ] || python3 -m venv "$prefix"
"$prefix/bin/python" -m pip install -q --upgrade pip
"$prefix/bin/python" -m pip install -q .
mkdir -p "$bin_dir"
ln -sf "$prefix/bin/vnode" "$bin_dir/vnode"

mkdir -p "$config_dir"
mkdir -p "$config_dir/manifests"  # the sample config's staticPodPath: put static pod manifests here
if [ ! -e "$config_dir/vnode.yaml" ]; then
    install -m 0644 conf/vnode.yaml "$config_dir/vnode.yaml"
fi

mkdir -p "$unit_dir"
sed -e "s|@BIN@|$bin_dir|g" -e "s|@CONFIG@|$config_dir/vnode.yaml|g" conf/vnode.service > "$unit_dir/vnode.service"
if [ -d /run/systemd/system ] && [ "$unit_dir" = /etc/systemd/system ]; then
    systemctl daemon-reload
fi
echo "install: done: $bin_dir/vnode, $config_dir/vnode.yaml, $unit_dir/vnode.service"
echo "install: start it with: systemctl enable --now vnode   (logs: journalctl -u vnode)"
