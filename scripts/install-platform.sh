#!/usr/bin/env bash
# Installs what the sandbox (and so every test) needs on a fresh Debian 12 machine: a few
# Debian packages (etcd, iproute2, Debian's Go 1.19 for the build, ...) and
# kube-apiserver, kube-controller-manager, kube-scheduler and kubectl 1.20.2 built from
# Debian's `kubernetes` source package. What only the tests need (Garage, cargo-deny,
# promtool, shellcheck, ...) is scripts/install-test-tools.sh.
#
# Idempotent: the binaries are cached in $DEPLOYCTL_CACHE/k8s-1.20.2/bin (default cache
# ~/.cache/deployctl); a second run only checks and takes about a second.
# Why build from source: no container engine and no download outside the package
# registries is possible here, so kind/k3d/envtest's downloader cannot be used.
#
# Settings (environment): DEPLOYCTL_CACHE (the cache), DEPLOYCTL_APT_DIR (default
# /etc/apt, where the deb-src entry goes), DEPLOYCTL_GO_ROOT (default /usr/lib/go, Debian's
# Go) and DEPLOYCTL_REFLECT2_DIR (Debian's reflect2 1.0.2 sources). The last three exist so
# that tests/packaging/test_install_scripts.py can run this script with stubs.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
BIN_DIR="$K8S_BIN_DIR"
APT_DIR="${DEPLOYCTL_APT_DIR:-/etc/apt}"
# Debian's Go 1.19, not whatever `go` comes first on PATH: Kubernetes 1.20's vendored code
# does not build with Go 1.23+ (its go:linkname uses are refused).
GO_ROOT="${DEPLOYCTL_GO_ROOT:-/usr/lib/go}"
REFLECT2_DIR="${DEPLOYCTL_REFLECT2_DIR:-/usr/share/gocode/src/github.com/modern-go/reflect2}"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
START=$(date +%s)
mkdir -p "$CACHE"

say() { printf '[install-platform +%ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

# Runs a long command with its output in LOG, printing the lines that match PATTERN (its
# phases) as they come and, every minute, how many files PROGRESS_DIR holds (a build's
# cache grows as it compiles); on failure, the log's tail.
run_logged() {
  local log=$1 pattern=$2 progress_dir=$3; shift 3
  local began=$SECONDS
  # The sleep does not hold our output open: a caller reading it sees the end at once.
  ( while sleep 60 >/dev/null 2>&1; do
      printf '    ... still running: %s min, %s files compiled so far\n' "$(( (SECONDS - began) / 60 ))" \
        "$(find "$progress_dir" -type f 2>/dev/null | wc -l)"
    done ) &
  local beat=$!
  local rc=0
  # The log exists before tail opens it: started first, tail could find no file and give up.
  : >"$log"
  "$@" >>"$log" 2>&1 &
  local pid=$!
  # The filter reads the log as it grows and stops when the command ends.
  tail -n +1 --pid="$pid" -f "$log" 2>/dev/null | grep --line-buffered -E "$pattern" | sed -u 's/^/    /' || true
  wait "$pid" || rc=$?
  kill "$beat" 2>/dev/null; wait "$beat" 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    tail -n 40 "$log" >&2
    echo "failed (exit $rc): $*; full log in $log" >&2
    return "$rc"
  fi
}

# Debian packages: the control plane's etcd, the node's network and mount tools, and what
# the Kubernetes build needs (Go 1.19, make, rsync, a C toolchain for cgo-free linking).
APT_PACKAGES=(etcd-server iproute2 util-linux procps jq rsync make gcc libc6-dev golang-go
              golang-github-modern-go-reflect2-dev ca-certificates)

install_debian_packages "${APT_PACKAGES[@]}"

have_all=1
for b in "${BINARIES[@]}"; do
  [ -x "$BIN_DIR/$b" ] || have_all=0
done
if [ "$have_all" = 1 ]; then
  say "control plane $K8S_VERSION already cached in $BIN_DIR"
  exit 0
fi

say "building ${BINARIES[*]} $K8S_VERSION from Debian's source package (once; about 5-6 minutes on 2 cores)"
if ! grep -rqs '^Types:.*deb-src' "$APT_DIR/sources.list.d/" && ! grep -qs '^deb-src' "$APT_DIR/sources.list"; then
  # Same mirror and keyring as the machine's own bookworm entry.
  mkdir -p "$APT_DIR/sources.list.d"
  cat >"$APT_DIR/sources.list.d/deployctl-deb-src.sources" <<SRC
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
say "downloading the kubernetes source package (34 MB)"
apt-get source --download-only kubernetes >"$WORK/source.log" 2>&1 || {
  cat "$WORK/source.log" >&2; echo "apt-get source kubernetes failed" >&2; exit 1; }
origs=(kubernetes_*really"${K8S_VERSION}".orig.tar.gz)
ORIG=${origs[0]}
say "unpacking $ORIG"
mkdir src
tar -xzf "$ORIG" -C src --strip-components=1
cd src
# reflect2 1.0.1 (vendored) crashes under Go 1.18+ (SIGSEGV in mapiterinit); use Debian's 1.0.2.
[ -d "$REFLECT2_DIR" ] || { echo "reflect2 sources not found in $REFLECT2_DIR (package golang-github-modern-go-reflect2-dev)" >&2; exit 1; }
rm -rf vendor/github.com/modern-go/reflect2
cp -r "$REFLECT2_DIR" vendor/github.com/modern-go/reflect2
export PATH="$GO_ROOT/bin:$PATH" GOPATH="$PWD/.go" CGO_ENABLED=0 \
  GOFLAGS=-mod=vendor GO111MODULE=off GOTOOLCHAIN=local
mkdir -p .go/src/k8s.io
ln -sfn ../../.. .go/src/k8s.io/kubernetes
cd .go/src/k8s.io/kubernetes
say "compiling with $(go version | awk '{print $3}'): code generation, then the four binaries (log: $WORK/build.log)"
# Kubernetes' build prints each phase on a line starting with "+++", then what it builds.
# (Its GOFLAGS must stay one flag: a second one, such as -v, breaks its code generators.)
# It keeps its own Go build cache, in _output/local/go/cache: the heartbeat counts that.
run_logged "$WORK/build.log" '^\+\+\+|^    (\.\/)?(vendor|cmd)/' "$PWD/_output/local/go/cache" \
  make WHAT="${BINARIES[*]/#/cmd/}"
mkdir -p "$BIN_DIR"
for b in "${BINARIES[@]}"; do
  install -m 0755 "_output/local/bin/linux/amd64/$b" "$BIN_DIR/$b"
done
cd /
rm -rf "$WORK"
say "done: ${BINARIES[*]} in $BIN_DIR"
