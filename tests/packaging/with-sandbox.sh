#!/usr/bin/env bash
# Runs the packaging tests against a throwaway Kubernetes 1.37 cluster (deployctl-sandbox
# with one simulated node and a registry on loopback), then stops it. The controller and
# demo app images are built from the workspace's debug binaries by scripts/build-image.sh
# and pushed to the registry; the node pulls them like any node would. Extra arguments go
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
bin="${CARGO_TARGET_DIR:-target}/debug"
"$bin/deployctl-sandbox" --nodes 1 --registry --kubeconfig-out "$kubeconfig" >"$log" 2>&1 &
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

registry=$(sed -n 's/^running;.*registry=\([^ ;]*\).*/\1/p' "$log" | head -1)
[ -n "$registry" ] || { echo "deployctl-sandbox printed no registry address:" >&2; cat "$log" >&2; exit 1; }

# The images, from the debug binaries cargo built above (the release build is for real
# clusters; the image is the same but for the binaries' size). The demo app is pushed twice,
# v1 and v2, each image carrying its APP_VERSION, as a real release pipeline would build them.
build() { local out=$1; shift; bash scripts/build-image.sh --binaries "$bin" --out "$dir/images/$out" "$@" | tail -1; }
controller_digest=$(build controller --component controller --tag test --push "$registry/deployctl/deployctl:test")
demo_v1=$(build demo-v1 --component demo-app --tag v1 --env APP_VERSION=1 --push "$registry/deployctl/demo-app:v1")
demo_v2=$(build demo-v2 --component demo-app --tag v2 --env APP_VERSION=2 --push "$registry/deployctl/demo-app:v2")

DEPLOYCTL_TEST_KUBECONFIG="$kubeconfig" \
DEPLOYCTL_TEST_IMAGE="$registry/deployctl/deployctl:test@$controller_digest" \
DEPLOYCTL_TEST_DEMO_IMAGE="$registry/deployctl/demo-app@v1=$demo_v1,v2=$demo_v2" \
  python3 -m pytest tests/packaging "$@"
