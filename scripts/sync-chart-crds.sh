#!/usr/bin/env bash
# Copies the generated CRDs (manifests/crds/, from `deployctl-controller crdgen`) into the
# chart's crds/ directory. Run it after regenerating the CRDs:
#   cargo run -p deployctl-controller -- crdgen --out-dir manifests/crds
#   scripts/sync-chart-crds.sh
# With --check it changes nothing and exits 1 if the chart's copy differs (what
# tests/packaging checks).
set -euo pipefail
cd "$(dirname "$0")/.."
src=manifests/crds
dst=charts/deployctl/crds

if [ "${1:-}" = "--check" ]; then
  if diff -r -q "$src" "$dst"; then
    echo "chart CRDs match $src"
    exit 0
  fi
  echo "charts/deployctl/crds differs from $src; run scripts/sync-chart-crds.sh" >&2
  exit 1
fi

mkdir -p "$dst"
rm -f "$dst"/*.yaml
cp "$src"/*.yaml "$dst"/
crds=("$src"/*.yaml)
echo "copied ${#crds[@]} CRD file(s) to $dst"
