#!/usr/bin/env bash
# Installs what the sandbox (and so every test) needs on a fresh Debian 12 machine: a few
# Debian packages (the simulated node's network and mount tools, the image build and
# registry tools) and a current Kubernetes control plane: kube-apiserver,
# kube-controller-manager, kube-scheduler and kubectl 1.37.2, and etcd 3.7.3, built from
# their Go modules. What only the tests need (Garage,
# cargo-deny, promtool, shellcheck, ...) is scripts/install-test-tools.sh.
#
# Idempotent: the binaries are cached in $DEPLOYCTL_CACHE/k8s-1.37.2/bin and
# $DEPLOYCTL_CACHE/etcd-3.7.3/bin (default cache ~/.cache/deployctl); a binary already
# there that reports the right version is not built again, so a second run only checks
# and takes under a second. On an empty cache, on 2 cores: about 15 s of downloads (770 MB
# of modules), then kube-apiserver about 6 minutes, kube-controller-manager 1-2, the
# others under 1 each as they share most packages (8 minutes in all, measured).
# The Go caches are in $DEPLOYCTL_CACHE/go-current: the module cache (770 MB) stays; the
# build cache (4 GB) stays only until every binary is built, so that an interrupted run
# resumes where it stopped (DEPLOYCTL_KEEP_GO_BUILD_CACHE=1 keeps it for good).
#
# Why build: no container engine and no download outside the package registries is
# possible here (kind, k3d and envtest's downloader cannot be used), and Debian ships the
# whole control plane's source only up to 1.20. The Go module proxy serves it:
# `go install k8s.io/kubernetes/cmd/...@v1.37.2` is refused because k8s.io/kubernetes'
# go.mod has replace directives (its staging modules point to ./staging/...), so a build
# module of our own requires k8s.io/kubernetes v1.37.2 and replaces each staging module by
# its published v0.37.2 release (the list is read from k8s.io/kubernetes' own go.mod).
# etcd gets a second build module: its dependency versions differ from Kubernetes'.
#
# Settings (environment): DEPLOYCTL_CACHE (the cache), DEPLOYCTL_GO (the go command to
# start from; default /usr/local/go/bin/go, else `go` on PATH). Needs Go 1.26 or newer:
# with an older one (1.21+) the script sets GOTOOLCHAIN=go1.27.3, the one approved way to
# a newer Go, which the go command takes from the module proxy.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

# The oldest Go that builds both (the `go` line of k8s.io/kubernetes v1.37.2's and
# go.etcd.io/etcd/server/v3 v3.7.3's go.mod), and the approved newer one.
GO_MIN_VERSION=1.26.0
GO_APPROVED_TOOLCHAIN=go1.27.3
GO_DIR="$CACHE/go-current"
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
START=$(date +%s)
mkdir -p "$CACHE"

say() { printf '[install-platform +%ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

# Runs a long command with its output in LOG (appended), printing the lines that match
# PATTERN as they come and, every minute, how many files PROGRESS_DIR holds (a build
# cache grows as it compiles); on failure, the log's tail.
run_logged() {
  local log=$1 pattern=$2 progress_dir=$3; shift 3
  local began=$SECONDS
  # The sleep does not hold our output open: a caller reading it sees the end at once.
  ( while sleep 60 >/dev/null 2>&1; do
      printf '    ... still running: %s min, %s files in %s\n' "$(( (SECONDS - began) / 60 ))" \
        "$(find "$progress_dir" -type f 2>/dev/null | wc -l)" "$progress_dir"
    done ) &
  local beat=$!
  local rc=0 from
  touch "$log"
  from=$(( $(wc -l <"$log") + 1 ))
  "$@" >>"$log" 2>&1 &
  local pid=$!
  # The filter reads the log as it grows and stops when the command ends.
  tail -n "+$from" --pid="$pid" -f "$log" 2>/dev/null | grep --line-buffered -E "$pattern" \
    | sed -u 's/^/    /' || true
  wait "$pid" || rc=$?
  kill "$beat" 2>/dev/null; wait "$beat" 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    tail -n 40 "$log" >&2
    echo "failed (exit $rc): $*; full log in $log" >&2
    return "$rc"
  fi
}

# What `BINARY --version` (kubectl: `version --client`) prints when it is the right one.
expected_version() {
  case $1 in
    etcd) echo "etcd Version: $ETCD_VERSION" ;;
    kubectl) echo "Client Version: v$K8S_VERSION" ;;
    *) echo "Kubernetes v$K8S_VERSION" ;;
  esac
}

# True if DIR/BINARY exists and reports the expected version.
is_built() {
  local dir=$1 b=$2 out
  [ -x "$dir/$b" ] || return 1
  if [ "$b" = kubectl ]; then
    out=$("$dir/$b" version --client 2>/dev/null) || return 1
  else
    out=$("$dir/$b" --version 2>/dev/null) || return 1
  fi
  grep -qxF "$(expected_version "$b")" <<<"$out"
}

# Debian packages: the simulated node's network and mount tools, what the tests and the
# sandbox call (jq, ca-certificates for the module proxy), and the image tools:
# scripts/build-image.sh builds the OCI images with mmdebstrap, umoci and binutils and pushes
# them with skopeo, to a registry such as docker-registry on loopback.
APT_PACKAGES=(iproute2 util-linux procps jq ca-certificates
  mmdebstrap umoci skopeo binutils docker-registry)
install_debian_packages "${APT_PACKAGES[@]}"

missing_k8s=()
for b in "${K8S_BINARIES[@]}"; do
  is_built "$K8S_BIN_DIR" "$b" || missing_k8s+=("$b")
done
need_etcd=0
is_built "$ETCD_BIN_DIR" etcd || need_etcd=1
if [ ${#missing_k8s[@]} -eq 0 ] && [ "$need_etcd" = 0 ]; then
  say "Kubernetes $K8S_VERSION already cached in $K8S_BIN_DIR"
  say "etcd $ETCD_VERSION already cached in $ETCD_BIN_DIR"
  exit 0
fi

# The go command: not Debian's 1.19 (which install-platform.sh puts in /usr/bin and which
# cannot switch toolchains), unless nothing else is there.
GO="${DEPLOYCTL_GO:-}"
if [ -z "$GO" ]; then
  if [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; else GO=$(command -v go || true); fi
fi
if [ -z "$GO" ] || ! [ -x "$GO" ]; then
  echo "no go command found (set DEPLOYCTL_GO)" >&2
  exit 1
fi
PATH="$(dirname "$GO"):$PATH"
export PATH
# Everything the go command keeps goes under the cache; nothing of the user's settings
# (GOFLAGS such as -mod=vendor, a go.work) changes the build.
export GOMODCACHE="$GO_DIR/mod" GOCACHE="$GO_DIR/build" GOPATH="$GO_DIR/path"
export GOFLAGS=-mod=mod GOWORK=off CGO_ENABLED=0 GOTOOLCHAIN=local
local_go=$(go env GOVERSION)
local_go=${local_go#go}
if [ "$(printf '%s\n%s\n' "$GO_MIN_VERSION" "$local_go" | sort -V | head -n 1)" != "$GO_MIN_VERSION" ]; then
  case $local_go in
    1.1[0-9]*|1.20*) echo "$GO is Go $local_go, too old to switch toolchains; set DEPLOYCTL_GO to Go 1.21 or newer" >&2
                     exit 1 ;;
  esac
  say "Go $local_go is older than $GO_MIN_VERSION: using GOTOOLCHAIN=$GO_APPROVED_TOOLCHAIN (taken from the module proxy, 76 MB)"
  export GOTOOLCHAIN=$GO_APPROVED_TOOLCHAIN
fi
mkdir -p "$GOMODCACHE" "$GOCACHE" "$K8S_BIN_DIR" "$ETCD_BIN_DIR"

# Resolves a build module's dependencies and downloads the modules that PACKAGES need.
# If a dependency turns out to need a newer Go than the one in use, switches to the
# approved toolchain first.
download() {
  local dir=$1 log=$2; shift 2
  # Loading the module graph is where a module's `go` line newer than ours is refused.
  if ! (cd "$dir" && go list -m all >/dev/null 2>>"$log"); then
    if [ "$GOTOOLCHAIN" = local ] && tail -n 20 "$log" | grep -q 'requires go >='; then
      say "  a module needs a newer Go than $local_go: using GOTOOLCHAIN=$GO_APPROVED_TOOLCHAIN"
      export GOTOOLCHAIN=$GO_APPROVED_TOOLCHAIN
    else
      tail -n 40 "$log" >&2
      echo "resolving the modules of $dir failed; full log in $log" >&2
      exit 1
    fi
  fi
  ( cd "$dir" && run_logged "$log" '^go: downloading (k8s.io/kubernetes|go.etcd.io/etcd/server|golang.org/toolchain) ' \
      "$GOMODCACHE/cache/download" bash -c 'go list -deps "$@" >/dev/null' go-list "$@" )
  say "  modules downloaded: $(du -sh "$GOMODCACHE" | cut -f1) in $GOMODCACHE"
}

# Builds PACKAGE into DIR/NAME (through a temporary file, so that an interrupted build
# leaves nothing that looks finished) and checks its version.
build_one() {
  local moddir=$1 log=$2 dir=$3 name=$4 package=$5 ldflags=$6 began=$SECONDS
  say "building $name (about $7 min on 2 cores, more if nothing is compiled yet; log $log)"
  ( cd "$moddir" && run_logged "$log" '^(#|go: |.*error)' "$GOCACHE" \
      nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$dir/.$name.partial" "$package" )
  mv -f "$dir/.$name.partial" "$dir/$name"
  if ! is_built "$dir" "$name"; then
    echo "$dir/$name was built but does not report '$(expected_version "$name")'" >&2
    exit 1
  fi
  say "  $name done in $(( SECONDS - began )) s ($(du -h "$dir/$name" | cut -f1))"
}

if [ ${#missing_k8s[@]} -gt 0 ]; then
  log="$(dirname "$K8S_BIN_DIR")/build.log"
  printf '\n=== %s: building %s\n' "$(date -u +%FT%TZ)" "${missing_k8s[*]}" >>"$log"
  moddir="$GO_DIR/k8s-build-$K8S_VERSION"
  mkdir -p "$moddir"
  say "downloading k8s.io/kubernetes v$K8S_VERSION and its modules (about 10 s, 600 MB, on an empty cache)"
  kube_dir=$( (cd "$moddir" && GOFLAGS='' go mod download -json "k8s.io/kubernetes@v$K8S_VERSION") \
    2>>"$log" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  if [ -z "$kube_dir" ] || [ ! -f "$kube_dir/go.mod" ]; then
    echo "could not download k8s.io/kubernetes v$K8S_VERSION; see $log" >&2
    exit 1
  fi
  # Each staging module that k8s.io/kubernetes replaces by ./staging/src/k8s.io/NAME is
  # replaced here by its release, v0.MINOR.PATCH.
  staging=$(sed -n '/^replace (/,/^)/p' "$kube_dir/go.mod" | awk '$2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }')
  {
    printf 'module deployctl.local/k8s-build\n\ngo %s\n\nrequire k8s.io/kubernetes v%s\n\nreplace (\n' \
      "$GO_MIN_VERSION" "$K8S_VERSION"
    for m in $staging; do printf '\t%s => %s v0.%s\n' "$m" "$m" "${K8S_VERSION#1.}"; done
    printf ')\n'
  } >"$moddir/go.mod"
  packages=()
  for b in "${missing_k8s[@]}"; do packages+=("k8s.io/kubernetes/cmd/$b"); done
  download "$moddir" "$log" "${packages[@]}"
  # The version stamp that Kubernetes' own build (hack/lib/version.sh) puts in.
  build_date=$(cd "$moddir" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)
  minor=${K8S_VERSION#*.}
  minor=${minor%%.*}
  ldflags="-s -w"
  for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=${K8S_VERSION%%.*}"
    ldflags+=" -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
    ldflags+=" -X $p.gitCommit="
  done
  for b in "${missing_k8s[@]}"; do
    case $b in kube-apiserver) minutes=6 ;; kube-controller-manager) minutes=2 ;; *) minutes=1 ;; esac
    build_one "$moddir" "$log" "$K8S_BIN_DIR" "$b" "k8s.io/kubernetes/cmd/$b" "$ldflags" "$minutes"
  done
else
  say "Kubernetes $K8S_VERSION already cached in $K8S_BIN_DIR"
fi

if [ "$need_etcd" = 1 ]; then
  log="$(dirname "$ETCD_BIN_DIR")/build.log"
  printf '\n=== %s: building etcd\n' "$(date -u +%FT%TZ)" >>"$log"
  moddir="$GO_DIR/etcd-build-$ETCD_VERSION"
  mkdir -p "$moddir"
  # The etcd binary is the main package at the root of the server module.
  printf 'module deployctl.local/etcd-build\n\ngo %s\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' \
    "$GO_MIN_VERSION" "$ETCD_VERSION" >"$moddir/go.mod"
  say "downloading go.etcd.io/etcd/server/v3 v$ETCD_VERSION and its modules"
  download "$moddir" "$log" go.etcd.io/etcd/server/v3
  build_one "$moddir" "$log" "$ETCD_BIN_DIR" etcd go.etcd.io/etcd/server/v3 \
    "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v$ETCD_VERSION" 1
else
  say "etcd $ETCD_VERSION already cached in $ETCD_BIN_DIR"
fi
if [ "${DEPLOYCTL_KEEP_GO_BUILD_CACHE:-0}" != 1 ]; then
  say "removing the Go build cache $GOCACHE ($(du -sh "$GOCACHE" | cut -f1))"
  rm -rf "$GOCACHE"
fi
say "done: ${K8S_BINARIES[*]} in $K8S_BIN_DIR, etcd in $ETCD_BIN_DIR"
