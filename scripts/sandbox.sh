#!/usr/bin/env bash
# The sandbox: a local Kubernetes 1.20 control plane with a simulated node (pods run as
# local processes), the deployctl controller, and the demo stack. Then a walkthrough: a
# good upgrade, and a bad one that deployctl rolls back by itself.
#
# Usage: scripts/sandbox.sh            walk through, then keep the sandbox up until Ctrl-C
#        scripts/sandbox.sh --exit     walk through, then tear everything down
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP=1
[ "${1:-}" = "--exit" ] && KEEP=0
ROOT=$PWD
STATE="$ROOT/.sandbox"
export KUBECONFIG="$STATE/kubeconfig"
BIN="$ROOT/target/debug"
export PATH="$BIN:$PATH"
START=$(date +%s)
say() { printf '\n\033[1m==> %s\033[0m (+%ss)\n' "$*" "$(( $(date +%s) - START ))"; }

say "Installing the platform (first run: Debian packages and a 6-minute Kubernetes build; cached after)"
bash scripts/install-platform.sh

say "Building deployctl, the demo app and the sandbox"
cargo build --workspace --bins --locked

rm -rf "$STATE" && mkdir -p "$STATE"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

say "Starting the control plane and a simulated node"
deployctl-sandbox --kubeconfig-out "$KUBECONFIG" \
  --apply manifests/crds/productionstacks.yaml --apply manifests/crds/stackoperations.yaml \
  >"$STATE/cluster.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 120); do
  if [ -s "$KUBECONFIG" ] && kubectl get nodes >/dev/null 2>&1 && grep -q "running;" "$STATE/cluster.log"; then break; fi
  kill -0 "${PIDS[0]}" 2>/dev/null || { cat "$STATE/cluster.log"; exit 1; }
  sleep 0.5
done
kubectl get nodes

say "Starting the deployctl controller (log: .sandbox/controller.log, metrics: http://127.0.0.1:9090/metrics)"
deployctl-controller --metrics-addr 127.0.0.1:9090 >"$STATE/controller.log" 2>&1 &
PIDS+=($!)

# Every step the controller takes is an Event on the stack: print them as they happen.
kubectl get events --watch-only --field-selector involvedObject.kind=ProductionStack \
  -o custom-columns='TIME:.eventTime,TYPE:.type,REASON:.reason,MESSAGE:.message' \
  2>/dev/null | sed -u 's/^/    event: /' &
PIDS+=($!)

say "1/3 Installing the demo stack (release 1): db first, then api"
kubectl apply --server-side -f examples/demo-stack/stack.yaml
deployctl wait shop --for healthy --timeout 5m
deployctl status shop

say "2/3 A good upgrade (release 2): api is rolled, analysed by its gates, promoted"
kubectl apply --server-side -f examples/demo-stack/stack-good.yaml
deployctl wait shop --for healthy --timeout 5m
deployctl status shop

say "3/3 A bad upgrade (release 3): api's gates fail, deployctl rolls back by itself"
kubectl apply --server-side -f examples/demo-stack/stack-bad.yaml
deployctl wait shop --for rolled-back --timeout 5m || true
deployctl status shop
deployctl history shop

say "Done in $(( $(date +%s) - START ))s"
cat <<TXT
The stack holds release 2 (its stable revision); the spec still names release 3, which is
not retried until the spec changes or someone runs \`deployctl retry shop\`.

Try:  export KUBECONFIG=$KUBECONFIG PATH=$BIN:\$PATH
      deployctl status shop --watch
      deployctl rollback shop --to-revision 1 --reason "trying it" --wait
      kubectl apply --server-side -f examples/demo-stack/stack.yaml
TXT
if [ "$KEEP" = 1 ]; then
  say "The sandbox keeps running; Ctrl-C stops and removes everything"
  wait "${PIDS[0]}"
fi
