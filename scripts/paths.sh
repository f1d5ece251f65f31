# shellcheck shell=bash disable=SC2034
# Where the install scripts put things, and which versions: sourced by every script in
# scripts/ so that they agree. The cache is $DEPLOYCTL_CACHE (default ~/.cache/deployctl).
CACHE="${DEPLOYCTL_CACHE:-$HOME/.cache/deployctl}"
K8S_VERSION=1.20.2
# kube-apiserver, kube-controller-manager, kube-scheduler and kubectl (install-platform.sh).
K8S_BIN_DIR="$CACHE/k8s-$K8S_VERSION/bin"
# Pinned: a new version is a reviewed change, not something a CI run picks up.
CARGO_DENY_VERSION=0.20.2
CARGO_DENY_DIR="$CACHE/cargo-deny-$CARGO_DENY_VERSION"
GARAGE_VERSION=2.5.0
GARAGE_DIR="$CACHE/garage-$GARAGE_VERSION"
export DEPLOYCTL_CACHE="$CACHE"
