#!/usr/bin/env bash
# Copies the alerting rules (deploy/prometheus/alerts.yaml, the one source) into the chart,
# whose PrometheusRule template reads charts/deployctl/files/alerts.yaml. Run it after
# editing the rules (and `promtool test rules deploy/prometheus/alerts_test.yaml`).
# With --check it changes nothing and exits 1 if the chart's copy differs.
set -euo pipefail
cd "$(dirname "$0")/.."
src=deploy/prometheus/alerts.yaml
dst=charts/deployctl/files/alerts.yaml

if [ "${1:-}" = "--check" ]; then
  if cmp -s "$src" "$dst"; then
    echo "chart alerts match $src"
    exit 0
  fi
  echo "$dst differs from $src; run scripts/sync-chart-alerts.sh" >&2
  exit 1
fi

mkdir -p "$(dirname "$dst")"
cp "$src" "$dst"
echo "copied $src to $dst"
