#!/usr/bin/env bash
# Installs everything deployctl's tests and sandbox need on a fresh Debian 12 machine:
# Debian packages (etcd, Go, iproute2, ...) and kube-apiserver, kube-controller-manager and
# kube-scheduler 1.20.2 built from Debian's `kubernetes` source package.
#
# Also builds Garage (an S3 server for the snapshot tests) and cargo-deny from crates.io.
#
# Idempotent: the three binaries are cached under $DEPLOYCTL_CACHE (default
# ~/.cache/deployctl/k8s-1.20.2/bin), Garage and cargo-deny under $DEPLOYCTL_CACHE/garage
# and $DEPLOYCTL_CACHE/cargo-deny; a second run only checks and takes seconds.
# Why build from source: no container engine and no download outside the package
# registries is possible here, so kind/k3d/envtest's downloader cannot be used.
set -euo pipefail

CACHE="${DEPLOYCTL_CACHE:-$HOME/.cache/deployctl}"
K8S_VERSION=1.20.2
BIN_DIR="$CACHE/k8s-$K8S_VERSION/bin"
START=$(date +%s)

say() { printf '[install-platform +%ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

APT_PACKAGES=(etcd-server iproute2 util-linux procps jq rsync golang-go golang-github-modern-go-reflect2-dev
              ca-certificates sqlite3 prometheus restic lua5.4)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages already installed"
fi
# Debian's prometheus package starts a service on install; the tests start their own.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true; fi

# Garage: a real S3-compatible server for the snapshot store's tests (AGPL; run as a
# separate program, never linked). About 13 minutes to build on 2 cores, once.
GARAGE="$CACHE/garage/bin/garage"
if [ -x "$GARAGE" ]; then
  say "garage already cached in $GARAGE"
else
  say "building garage (S3 server for the snapshot tests; about 13 minutes on 2 cores, once)"
  cargo install garage --locked --quiet --root "$CACHE/garage" >"$CACHE/garage-build.log" 2>&1 || {
    tail -n 30 "$CACHE/garage-build.log"; echo "garage build failed; log in $CACHE/garage-build.log" >&2; exit 1; }
  say "garage installed in $GARAGE"
fi

# cargo-deny: licence, ban and source checks of the dependency tree (deny.toml), run by
# scripts/test.sh. Built from crates.io once, about 5 minutes on 2 cores.
CARGO_DENY="$CACHE/cargo-deny/bin/cargo-deny"
if [ -x "$CARGO_DENY" ]; then
  say "cargo-deny already cached in $CARGO_DENY"
else
  say "building cargo-deny (dependency licence/ban/source checks; about 5 minutes on 2 cores, once)"
  cargo install cargo-deny --locked --quiet --root "$CACHE/cargo-deny" >"$CACHE/cargo-deny-build.log" 2>&1 || {
    tail -n 30 "$CACHE/cargo-deny-build.log"; echo "cargo-deny build failed; log in $CACHE/cargo-deny-build.log" >&2; exit 1; }
  say "cargo-deny installed in $CARGO_DENY"
fi

have_all=1
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  [ -x "$BIN_DIR/$b" ] || have_all=0
done
if [ "$have_all" = 1 ]; then
  say "control plane $K8S_VERSION already cached in $BIN_DIR"
  exit 0
fi

say "building kube-apiserver, kube-controller-manager, kube-scheduler $K8S_VERSION from Debian source (about 6 minutes on 2 cores)"
SRC_LIST=/etc/apt/sources.list.d/deployctl-deb-src.sources
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  # Same mirror and keyring as the machine's own bookworm entry.
  cat > "$SRC_LIST" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -qq
fi

WORK="$CACHE/build"
rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"
say "downloading the kubernetes source package"
apt-get source --download-only kubernetes >/dev/null 2>&1
ORIG=$(ls kubernetes_*really${K8S_VERSION}.orig.tar.gz | head -n1)
say "unpacking $ORIG"
mkdir src
tar -xzf "$ORIG" -C src --strip-components=1
cd src
# reflect2 1.0.1 (vendored) crashes under Go 1.18+ (SIGSEGV in mapiterinit); use Debian's 1.0.2.
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
export GOPATH="$PWD/.go" GOCACHE="$CACHE/gocache" CGO_ENABLED=0 GOFLAGS=-mod=vendor GO111MODULE=off
mkdir -p .go/src/k8s.io
ln -sfn ../../.. .go/src/k8s.io/kubernetes
cd .go/src/k8s.io/kubernetes
say "compiling (go $(go version | awk '{print $3}'))"
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" >"$WORK/build.log" 2>&1 || {
  tail -n 40 "$WORK/build.log"; echo "build failed; full log in $WORK/build.log" >&2; exit 1; }
mkdir -p "$BIN_DIR"
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  install -m 0755 "_output/local/bin/linux/amd64/$b" "$BIN_DIR/$b"
done
cd /
rm -rf "$WORK"
say "done: binaries in $BIN_DIR"
