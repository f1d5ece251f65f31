#!/usr/bin/env bash
# Runs every test of deployctl on this machine, installing what they need first.
# Usage: scripts/test.sh            (the whole suite, as CI runs it)
#        scripts/test.sh -p deployctl-controller   (extra args go to `cargo test`)
# Settings (environment): DEPLOYCTL_CACHE (the install scripts' cache), CARGO_TARGET_DIR,
# DEPLOYCTL_TEST_THREADS (default 4), DEPLOYCTL_ADVISORY_DB (an offline copy of the RustSec
# advisory database; default ../shared/advisory-db beside the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
START=$(date +%s)
# A clean build gains nothing from incremental state; it only costs disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
say() { printf '\n[test +%ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

say "installing the platform (Debian packages, Kubernetes 1.37 control plane and etcd; cached after the first run)"
bash scripts/install-platform.sh
say "installing the test tools (promtool, shellcheck, cargo-deny, Garage; cached after the first run)"
bash scripts/install-test-tools.sh
# The control plane's kubectl first: the tests and the packaging tests call `kubectl`.
export PATH="$K8S_BIN_DIR:$CARGO_DENY_DIR/bin:$PATH"
export DEPLOYCTL_GARAGE_BIN="$GARAGE_DIR/bin/garage"

say "shellcheck (every script)"
shellcheck scripts/*.sh tests/packaging/*.sh benches/snapshot/*.sh

say "checking formatting"
cargo fmt --all -- --check

say "building every binary (the tests run them as real processes)"
cargo build --workspace --bins --locked

say "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo deny: advisories (offline RustSec copy), licences, banned crates, sources (deny.toml)"
# It reads the metadata of every target's crates, not only this machine's (the build
# fetched those): fetch them all from crates.io first, then check offline. The advisory
# database is fetched from a git host that this machine and CI cannot reach: cargo-deny
# reads an offline copy instead, from a git checkout named as it names its default one.
# Duplicate versions only warn; run it without --hide-inclusion-graph to see which crates
# pull a version in.
cargo fetch --locked
advisory_src="${DEPLOYCTL_ADVISORY_DB:-$ROOT/../shared/advisory-db}"
[ -d "$advisory_src/crates" ] || {
  echo "no RustSec advisory database at $advisory_src: set DEPLOYCTL_ADVISORY_DB to a copy (a checkout of github.com/rustsec/advisory-db)" >&2
  exit 1
}
deny_dir=$(mktemp -d "${TMPDIR:-/tmp}/deployctl-deny-XXXXXX")
trap 'rm -rf "$deny_dir"' EXIT
db="$deny_dir/advisory-db-3157b0e258782691"
cp -r "$advisory_src" "$db"
chmod -R u+w "$db"
git -C "$db" init -q && git -C "$db" add -A &&
  git -C "$db" -c user.name=ci -c user.email=ci@localhost commit -qm snapshot
sed "/^\[advisories\]/a db-path = \"$deny_dir\"" deny.toml >"$deny_dir/deny.toml"
cargo deny --config "$deny_dir/deny.toml" --offline --locked check --hide-inclusion-graph \
  advisories licenses bans sources

say "running the Rust tests"
# Tests wait on real clusters and processes, not on the CPU: run more at once than cores.
cargo test --workspace --locked --no-fail-fast "$@" -- --test-threads "${DEPLOYCTL_TEST_THREADS:-4}"

say "running the packaging tests (chart, manifests, alerts, install scripts)"
# Against a throwaway cluster with a simulated node: installs the chart, runs its
# controller, dry-runs every rendered object.
bash tests/packaging/with-sandbox.sh -q

say "checking that nothing outlived the tests"
bash scripts/check-leftovers.sh
say "all tests passed"
