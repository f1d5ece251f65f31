#!/usr/bin/env bash
# Runs the packaging tests against a throwaway Kubernetes 1.37 cluster (deployctl-sandbox
# with one simulated node, which runs the workspace's binaries as the images
# deployctl.dev/deployctl and deployctl.dev/demo-app), then stops it. Extra arguments go
# to pytest.
#   tests/packaging/with-sandbox.sh -q
# Needs: scripts/install-platform.sh (control-plane binaries) and scripts/install-test-tools.sh
#   (lua5.4, promtool, the Python packages); or by hand: lua5.4, promtool and
#   pip install -r tests/packaging/requirements.txt
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build -q --workspace --bins
dir=$(mktemp -d "${TMPDIR:-/tmp}/deployctl-pkg-XXXXXX")
kubeconfig="$dir/kubeconfig"
log="$dir/sandbox.log"
"${CARGO_TARGET_DIR:-target}/debug/deployctl-sandbox" --nodes 1 --kubeconfig-out "$kubeconfig" >"$log" 2>&1 &
pid=$!
cleanup() {
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# The sandbox prints "running;" once the API server answers and the kubeconfig is written.
for _ in $(seq 1 240); do
  grep -q '^running;' "$log" && break
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "deployctl-sandbox exited before it was ready:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.5
done
grep -q '^running;' "$log" || { echo "deployctl-sandbox not ready after 120s:" >&2; cat "$log" >&2; exit 1; }

DEPLOYCTL_TEST_KUBECONFIG="$kubeconfig" python3 -m pytest tests/packaging "$@"
