#!/usr/bin/env bash
# Builds the real control plane the integration tests run (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, metrics-server) from their Go modules, once
# per machine:
# the binaries are cached under ${VNODE_KUBE_CACHE:-~/.cache/vnode}/kube-<version>-<hash of the
# build files> and the script only prints that directory when it is already there.
# Usage: scripts/build-kube.sh [--print-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
src=integration/kube/gobuild
version=1.37.2
hash=$(cat "$src"/kube/go.mod "$src"/kube/main.go "$src"/etcd/go.mod "$src"/etcd/main.go \
  "$src"/metrics-server/go.mod "$0" | sha256sum | cut -c1-12)
dir="${VNODE_KUBE_CACHE:-${HOME:-/root}/.cache/vnode}/kube-$version-$hash"
if [ "${1:-}" = "--print-dir" ]; then echo "$dir"; exit 0; fi
built() { [ -x "$dir/bin/kube" ] && [ -x "$dir/bin/etcd" ] && [ -x "$dir/bin/metrics-server" ]; }
if built; then echo "$dir"; exit 0; fi

# Several checkouts on one machine share the cache: one builds, the others wait for it.
mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
if built; then echo "$dir"; exit 0; fi

command -v go >/dev/null || { echo "build-kube: go is not installed (the machine's Go 1.26 is needed)" >&2; exit 1; }
mkdir -p "$dir.tmp/bin"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=v$version -X $pkg.gitMajor=${version%%.*} \
 -X $pkg.gitMinor=$(echo "$version" | cut -d. -f2) -X $pkg.gitTreeState=clean \
 -X $pkg.buildDate=1970-01-01T00:00:00Z"
start=$SECONDS
echo "build-kube: building etcd, kube $version and metrics-server (a cold build takes a long while on 2 cores)" >&2
case "$dir" in /*) out="$dir.tmp/bin" ;; *) out="$PWD/$dir.tmp/bin" ;; esac
(cd "$src/etcd" && go build -trimpath -ldflags "-s -w" -o "$out/etcd" .)
(cd "$src/kube" && go build -trimpath -ldflags "$ldflags" -o "$out/kube" .)
(cd "$src/metrics-server" && go build -trimpath -ldflags "-s -w" -o "$out/metrics-server" \
  sigs.k8s.io/metrics-server/cmd/metrics-server)
for name in kube-apiserver kube-controller-manager kube-scheduler kubectl; do ln -sf kube "$out/$name"; done
rm -rf "$dir" && mv "$dir.tmp" "$dir"
echo "build-kube: built in $((SECONDS - start)) s" >&2
echo "$dir"
