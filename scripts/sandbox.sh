#!/usr/bin/env bash
# The sandbox: a local Kubernetes 1.37 control plane with a simulated node (pods run as
# local processes), the deployctl controller, and the demo stack. Then a walkthrough: a
# good upgrade, and a bad one (its database migration included) that deployctl rolls back
# by itself, data and all.
#
# Usage: scripts/sandbox.sh            walk through, then keep the sandbox up until Ctrl-C
#        scripts/sandbox.sh --exit     walk through, then tear everything down
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP=1
[ "${1:-}" = "--exit" ] && KEEP=0
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
STATE="$ROOT/.sandbox"
export KUBECONFIG="$STATE/kubeconfig"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
# The control plane's own kubectl (1.37, built with it), then this workspace's binaries.
export PATH="$K8S_BIN_DIR:$BIN:$PATH"
START=$(date +%s)
say() { printf '\n\033[1m==> %s\033[0m (+%ss)\n' "$*" "$(( $(date +%s) - START ))"; }

say "Installing the platform (first run: Debian packages and a 5-6 minute Kubernetes build; cached after)"
bash scripts/install-platform.sh

# Only what the sandbox runs: the node and control plane (deployctl-sandbox), the
# controller, the CLI and the demo app. Cargo prints a line per crate it compiles.
say "Building deployctl, the demo app and the sandbox (first run: about 2-3 minutes on 2 cores; seconds after)"
cargo build --locked --bins -p deployctl-harness -p deployctl-controller -p deployctl -p demo-app

rm -rf "$STATE" && mkdir -p "$STATE"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

say "Starting the control plane and a simulated node"
# The CRDs as one file: each --apply file starts with an API discovery, which can catch the
# group of a CRD applied a moment before half-registered (404).
for f in manifests/crds/*.yaml; do cat "$f"; echo "---"; done >"$STATE/crds.yaml"
deployctl-sandbox --kubeconfig-out "$KUBECONFIG" --apply "$STATE/crds.yaml" \
  >"$STATE/cluster.log" 2>&1 &
PIDS+=($!)
# Up once the node is Ready and the CRDs are served (a CRD is served a moment after it is
# applied; kubectl must see it before it can apply a stack).
for _ in $(seq 1 120); do
  if [ -s "$KUBECONFIG" ] && kubectl get nodes >/dev/null 2>&1 && grep -q "running;" "$STATE/cluster.log" \
    && kubectl get productionstacks,stackoperations,stacksnapshots >/dev/null 2>&1; then break; fi
  kill -0 "${PIDS[0]}" 2>/dev/null || { cat "$STATE/cluster.log"; exit 1; }
  sleep 0.5
done
kubectl get nodes

say "Starting the deployctl controller (log: .sandbox/controller.log, metrics: http://127.0.0.1:9090/metrics)"
# Restarted when it exits, with back-off, as the kubelet restarts the controller's pod (it
# exits on purpose when it loses its Lease, e.g. when a slow disk delays a renewal). The
# controller dies with its supervisor (pdeathsig), so Ctrl-C stops both.
(
  delay=1
  while true; do
    began=$SECONDS
    rc=0
    setpriv --pdeathsig TERM -- deployctl-controller --metrics-addr 127.0.0.1:9090 >>"$STATE/controller.log" 2>&1 || rc=$?
    [ $(( SECONDS - began )) -ge 60 ] && delay=1
    echo "sandbox: the controller exited (status $rc); restarting it in ${delay}s, as the kubelet would" | tee -a "$STATE/controller.log" >&2
    sleep "$delay"
    delay=$(( delay * 2 > 16 ? 16 : delay * 2 ))
  done
) &
PIDS+=($!)

# Every step the controller takes is an Event on the stack: print them as they happen. The
# Event recorder folds a reason seen again within minutes into the first Event (a series:
# count and last time, but the first message), so a repeat is printed with where the
# components are now instead of its stale message; `deployctl status` and `history` have
# the details.
kubectl get events --watch-only --field-selector involvedObject.kind=ProductionStack \
  -o custom-columns='TIME:.eventTime,AGAIN:.series.lastObservedTime,TYPE:.type,REASON:.reason,MESSAGE:.message' \
  2>/dev/null | while read -r time again type reason message; do
    [ "$time" = TIME ] && continue
    if [ "$again" != "<none>" ]; then
      time=$again
      message="(repeated; now $(kubectl get pstack shop -o jsonpath='{range .status.components[*]}{.name} {.phase} at revision {.revision}; {end}' 2>/dev/null | sed 's/; $//'))"
    fi
    printf '    event: %s  %-7s  %-20s  %s\n' "$time" "$type" "$reason" "$message"
  done &
PIDS+=($!)

say "1/3 Installing the demo stack (release 1): db first, then api"
kubectl apply --server-side -f examples/demo-stack/stack.yaml
deployctl wait shop --for healthy --timeout 5m
deployctl status shop

say "2/3 A good upgrade (release 2): api is rolled, analysed by its gates, promoted"
kubectl apply --server-side -f examples/demo-stack/stack-good.yaml
deployctl wait shop --for healthy --timeout 5m
deployctl status shop

say "3/3 A bad upgrade (release 3): db v2 migrates the data, then api's gates fail; deployctl rolls both back by itself, data included"
# The db's volume is a directory on this machine: the demo app's checksum reads it (read-only).
jp() { kubectl get pstack shop -o jsonpath="$1"; }
db_dir() {
  kubectl get pv "$(kubectl get pvc data-shop-db-0 -o jsonpath='{.spec.volumeName}')" \
    -o jsonpath='{.spec.local.path}'
}
checksum() { RUST_LOG=warn demo-app checksum --data-dir "$(db_dir)"; }
GOOD_REV=$(jp '{.status.currentRevision}')
BEFORE=$(checksum)
echo "db data before the upgrade:     checksum $BEFORE (schema 1)"
kubectl apply --server-side -f examples/demo-stack/stack-bad.yaml
# Once release 3's db runs, the data is migrated: show it (api is analysed after db, so
# there is a window of at least db's 10 s analysis).
for _ in $(seq 1 600); do
  rev=$(jp '{.status.currentRevision}')
  db=$(jp '{.status.components[?(@.name=="db")].revision}/{.status.components[?(@.name=="db")].phase}')
  phase=$(jp '{.status.phase}')
  if [ "$rev" != "$GOOD_REV" ] && [ "$db" = "$rev/Available" ] && [ "$phase" = Progressing ]; then
    echo "db data while release 3 runs:  checksum $(checksum) (migrated to schema 2 by demo-app v2)"
    break
  fi
  case "$phase" in RollingBack|RolledBack) break ;; esac
  sleep 0.2
done
deployctl wait shop --for rolled-back --timeout 5m || true
deployctl status shop
deployctl history shop

say "The data came back with the rollback"
kubectl get stacksnapshots -o custom-columns='SNAPSHOT:.metadata.name,COMPONENT:.spec.component,REVISION:.status.revision,PHASE:.status.phase,BYTES:.status.sizeBytes,DIGEST:.status.digest'
kubectl get pstack shop -o go-template='{{with .status.lastRollback}}rolled back from revision {{.fromRevision}} to {{.toRevision}} in {{.durationSeconds}} s (deadline met: {{.withinDeadline}})
reason: {{.reason}}{{range .restores}}
data of {{.component}}: {{.phase}} from snapshot {{.snapshot}}{{end}}{{end}}
'
AFTER=$(checksum)
echo "db data before the upgrade:     checksum $BEFORE"
echo "db data after the rollback:     checksum $AFTER"
if [ "$AFTER" = "$BEFORE" ]; then
  echo "equal: the migration was undone, and demo-app v1 serves the data again"
else
  echo "the checksums DIFFER: the data was not restored" >&2
  exit 1
fi

say "Done in $(( $(date +%s) - START ))s"
cat <<TXT
The stack holds release 2 (its stable revision) with the data from before release 3; the
spec still names release 3, which is not retried until the spec changes or someone runs
\`deployctl retry shop\`.

Try:  export KUBECONFIG=$KUBECONFIG PATH=$K8S_BIN_DIR:$BIN:\$PATH
      deployctl status shop --watch
      deployctl rollback shop --to-revision 1 --reason "trying it" --wait
      kubectl get stacksnapshots
      kubectl apply --server-side -f examples/demo-stack/stack.yaml
TXT
if [ "$KEEP" = 1 ]; then
  say "The sandbox keeps running; Ctrl-C stops and removes everything"
  wait "${PIDS[0]}"
fi
