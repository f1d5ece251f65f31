#!/usr/bin/env bash
# Runs every test of deployctl on this machine, installing what they need first.
# Usage: scripts/test.sh            (the whole suite, as CI runs it)
#        scripts/test.sh -p deployctl-controller   (extra args go to `cargo test`)
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
# A clean build gains nothing from incremental state; it only costs disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
say() { printf '\n[test +%ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

say "installing the platform (Debian packages, Kubernetes 1.20 control plane; cached after the first run)"
bash scripts/install-platform.sh

say "checking formatting"
cargo fmt --all -- --check

say "building every binary (the tests run them as real processes)"
cargo build --workspace --bins --locked

say "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo deny: licences, banned crates, sources (deny.toml)"
# It reads the metadata of every target's crates, not only this machine's (the build
# fetched those): fetch them all from crates.io first, then check offline. No
# `advisories`: the RustSec database is fetched from a git host that this machine and CI
# cannot reach. Duplicate versions only warn; run it without --hide-inclusion-graph to see
# which crates pull a version in.
cargo fetch --locked
PATH="${DEPLOYCTL_CACHE:-$HOME/.cache/deployctl}/cargo-deny/bin:$PATH" \
  cargo deny --offline --locked check --hide-inclusion-graph licenses bans sources

say "running the Rust tests"
# Tests wait on real clusters and processes, not on the CPU: run more at once than cores.
cargo test --workspace --locked --no-fail-fast "$@" -- --test-threads "${DEPLOYCTL_TEST_THREADS:-4}"

if [ -d tests/packaging ]; then
  say "running the packaging tests (chart, manifests, alerts)"
  python3 -m pip install -q -r tests/packaging/requirements.txt
  # Against a throwaway cluster with a simulated node: installs the chart, runs its
  # controller, dry-runs every rendered object.
  bash tests/packaging/with-sandbox.sh -q
fi

say "checking that nothing outlived the tests"
bash scripts/check-leftovers.sh
say "all tests passed"
