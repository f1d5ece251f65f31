# shellcheck shell=bash disable=SC2034
# Sourced by every script in scripts/ so that they agree: where the install scripts put
# things and which versions, and the one way Debian packages are installed. The cache is
# $DEPLOYCTL_CACHE (default ~/.cache/deployctl).
CACHE="${DEPLOYCTL_CACHE:-$HOME/.cache/deployctl}"
# The control plane the sandbox and the tests run (install-platform.sh builds it from Go
# modules): kube-apiserver, kube-controller-manager, kube-scheduler and kubectl, and etcd.
K8S_VERSION=1.37.2
K8S_BIN_DIR="$CACHE/k8s-$K8S_VERSION/bin"
ETCD_VERSION=3.7.3
ETCD_BIN_DIR="$CACHE/etcd-$ETCD_VERSION/bin"
# Pinned: a new version is a reviewed change, not something a CI run picks up.
CARGO_DENY_VERSION=0.20.2
CARGO_DENY_DIR="$CACHE/cargo-deny-$CARGO_DENY_VERSION"
GARAGE_VERSION=2.5.0
GARAGE_DIR="$CACHE/garage-$GARAGE_VERSION"
export DEPLOYCTL_CACHE="$CACHE"

# Installs the Debian packages given that are not installed yet, saying which (with the
# caller's `say`); a no-op that says so when all are there.
install_debian_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "Debian packages already installed"
    return
  fi
  say "installing Debian packages (about 1 minute): ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
