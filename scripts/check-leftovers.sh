#!/usr/bin/env bash
# Checks that a test run (or a sandbox) left nothing behind: no control-plane process from
# the deployctl cache, no process working in or naming a deployctl test state dir, no host
# veth of the simulated node (`dv...`), no mount under a state dir, and no state dir.
#
# Usage: scripts/check-leftovers.sh [EXTRA_PARENT_DIR...]
#   State dirs are looked for in ${TMPDIR:-/tmp} and in each EXTRA_PARENT_DIR (e.g. the
#   sandbox's --state-dir). Exit 0 and "no leftovers", or exit 1 listing what survived.
set -uo pipefail

CACHE="${DEPLOYCTL_CACHE:-$HOME/.cache/deployctl}"
# Matches the harness's state dirs: deployctl-test-<pid>-<random>.
STATE_RE='/deployctl-test-[0-9]+-[^/ ]+'
PARENTS=("${TMPDIR:-/tmp}" "$@")
found=()

self_pids=" $$ $BASHPID "
for proc in /proc/[0-9]*; do
  pid=${proc#/proc/}
  [[ $self_pids == *" $pid "* ]] && continue
  [ -r "$proc/cmdline" ] || continue
  cmdline=$(tr '\0\n' '  ' <"$proc/cmdline" 2>/dev/null) || continue
  [ -n "$cmdline" ] || continue  # kernel threads
  exe=$(readlink "$proc/exe" 2>/dev/null || true)
  cwd=$(readlink "$proc/cwd" 2>/dev/null || true)
  name=$(basename "${exe% (deleted)}")
  case "$name" in
    etcd | kube-apiserver | kube-controller-manager | kube-scheduler)
      if [[ $exe == "$CACHE"/* ]] || [[ $cmdline =~ $STATE_RE ]]; then
        found+=("process $pid ($name) of a test control plane: ${cmdline:0:200}")
        continue
      fi
      ;;
  esac
  if [[ $cwd =~ $STATE_RE ]]; then
    found+=("process $pid working in a state dir ($cwd): ${cmdline:0:200}")
  elif [[ $cmdline =~ $STATE_RE ]] && [[ $cmdline != *check-leftovers* ]]; then
    found+=("process $pid naming a state dir: ${cmdline:0:200}")
  fi
done

if command -v ip >/dev/null 2>&1; then
  while read -r ifname; do
    [ -n "$ifname" ] && found+=("veth interface $ifname")
  done < <(ip -o link show type veth 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); if ($2 ~ /^dv/) print $2 }')
fi

while read -r mountpoint; do
  [ -n "$mountpoint" ] && found+=("mount $mountpoint")
done < <(awk '{ print $5 }' /proc/self/mountinfo | grep -E "$STATE_RE" || true)

for parent in "${PARENTS[@]}"; do
  for dir in "$parent"/deployctl-test-*; do
    [ -e "$dir" ] && found+=("state dir $dir")
  done
done

if [ ${#found[@]} -eq 0 ]; then
  echo "no leftovers"
  exit 0
fi
echo "leftovers found (${#found[@]}):"
printf '  %s\n' "${found[@]}"
exit 1
