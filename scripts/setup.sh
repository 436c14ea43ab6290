#!/usr/bin/env bash
# Sets up a fresh Debian machine (as root) for running and testing vnode:
# the OS packages (containerd, runc, busybox-static for the images the harness builds, gcc for
# the pause binary, kubectl's companions later, mosquitto and its clients for the MQTT tests) and
# a virtualenv in .venv with vnode installed.
# Idempotent: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(containerd runc busybox-static containernetworking-plugins iptables gcc libc6-dev curl openssl ca-certificates
          mosquitto mosquitto-clients)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
    echo "setup: installing OS packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
extras="${VNODE_EXTRAS:-}"
# Once installed, a start needs no network (an edge box restarts its node with its uplink down):
# pip runs again only when the package's requirements change or an extra not installed is asked.
stamp=.venv/.vnode-setup
deps=$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)
have=""
if [ -f "$stamp" ] && [ "$(head -1 "$stamp")" = "$deps" ]; then have=$(sed -n 2p "$stamp"); fi
need=no
IFS=, read -ra wanted <<< "$extras"
for e in "${wanted[@]}"; do [[ ",$have," == *",$e,"* ]] || need=yes; done
[ -f "$stamp" ] && [ "$(head -1 "$stamp")" = "$deps" ] || need=yes
if [ "$need" = yes ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
    all=$(printf '%s\n' ${have//,/ } ${extras//,/ } | sort -u | paste -sd, -)
    printf '%s\n%s\n' "$deps" "$all" > "$stamp"
fi

# The tests run a real control plane built from its Go modules (cached per machine; a no-op once built).
if [[ ",$extras," == *",test,"* ]]; then
    scripts/build-kube.sh >/dev/null
fi
