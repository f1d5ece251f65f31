#!/usr/bin/env bash
# shellcheck disable=SC2154  # the T_* timings are set by printf -v in timed()
# Benchmark (not a test): deployctl-snapshot against restic on 1 GiB of data, one large file
# plus 10,000 small files, in one run on this machine:
#   full snapshot, snapshot after 1% of the data changed, restore with verification.
# Prints times and ours/restic ratios. Needs: cargo, python3, restic (apt-get install restic).
# Usage: benches/snapshot/run.sh            (BENCH_DIR=/path to choose the scratch directory;
#                                             it must be on a disk, not tmpfs, to be fair)
# BASELINE_BIN=/path/to/an/older/snapctl also times that build (plain repository) in the
# same run, for before/after figures that share the run's load.
# Needs about 5.5 GiB free there (6.6 GiB with BASELINE_BIN). Leave 6 minutes between runs on ext4 without a journal:
# for that long after the previous run's cleanup deleted ~30,000 files, every file creation
# in the same block groups scans past the deleted inodes (ext4's recently_deleted check),
# which slows the restores down by seconds, unevenly.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# The peer, from Debian (not installed by the test scripts: benchmarks are not tests).
command -v restic >/dev/null || { echo "restic is not installed: apt-get install restic" >&2; exit 1; }
(cd "$ROOT" && cargo build --release -p deployctl-snapshot --example snapctl)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/snapctl"

WORK=${BENCH_DIR:-$(mktemp -d /var/tmp/snapbench.XXXXXX)}
trap 'rm -rf "$WORK"' EXIT
avail_kib=$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')
need_mib=$((${BASELINE_BIN:+1100} + 5632))
if [ "$avail_kib" -lt $((need_mib * 1024)) ]; then
  echo "only $((avail_kib / 1024)) MiB free in $WORK; the benchmark needs about $need_mib MiB" >&2
  exit 1
fi
DATA="$WORK/data"
export RESTIC_REPOSITORY="$WORK/restic-repo" RESTIC_PASSWORD=bench-password RESTIC_CACHE_DIR="$WORK/restic-cache"

echo "== machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) (other builders share this machine)"
echo "== generating 1 GiB in $DATA (one large file + 10,000 small files)"
python3 - "$DATA" <<'PY'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(1)
small_dir = os.path.join(root, "small")
total_small = 0
for i in range(10_000):
    d = os.path.join(small_dir, f"d{i // 100:03d}")
    os.makedirs(d, exist_ok=True)
    n = rnd.randint(1, 20 * 1024)
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(rnd.randbytes(n))
    total_small += n
big = (1 << 30) - total_small
with open(os.path.join(root, "large.bin"), "wb") as f:
    left = big
    while left:
        n = min(left, 8 << 20)
        f.write(rnd.randbytes(n))
        left -= n
print(f"large file {big / 2**20:.0f} MiB, small files {total_small / 2**20:.0f} MiB")
PY

change_one_percent() {
  python3 - "$DATA" <<'PY'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(2)
path = os.path.join(root, "large.bin")
size = os.path.getsize(path)
changed = 0
with open(path, "r+b") as f:
    for _ in range(8):  # eight scattered 1 MiB regions
        f.seek(rnd.randrange(0, size - (1 << 20)))
        f.write(rnd.randbytes(1 << 20))
        changed += 1 << 20
for i in rnd.sample(range(10_000), 100):  # and 1% of the small files rewritten
    p = os.path.join(root, "small", f"d{i // 100:03d}", f"f{i:05d}")
    n = rnd.randint(1, 20 * 1024)
    with open(p, "wb") as f:
        f.write(rnd.randbytes(n))
    changed += n
print(f"changed {changed / 2**20:.1f} MiB")
PY
}

now() { date +%s.%N; }
# timed LABEL CMD... : runs CMD after a sync (so earlier writeback is not billed to it),
# records the wall time in $T_<LABEL>.
timed() {
  local label=$1; shift
  sync
  local s e
  s=$(now)
  "$@" >"$WORK/out.$label" 2>&1 || { cat "$WORK/out.$label"; exit 1; }
  e=$(now)
  # The T_<label> variables read below are set here.
  printf -v "T_$label" '%s' "$(awk -v a="$s" -v b="$e" 'BEGIN { printf "%.2f", b - a }')"
  local v="T_$label"
  printf '%-28s %6ss\n' "$label" "${!v}"
}

same_tree() { # same_tree A B: contents identical (cmp of every file)
  (cd "$1" && find . -type f | sort) >"$WORK/list.a"
  (cd "$2" && find . -type f | sort) >"$WORK/list.b"
  cmp -s "$WORK/list.a" "$WORK/list.b" || { echo "restored tree differs from the source (file list)" >&2; exit 1; }
  cmp "$1/large.bin" "$2/large.bin"
  diff -r -q "$1/small" "$2/small" >/dev/null || { echo "restored small files differ" >&2; exit 1; }
}

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/key.hex"
restic init >/dev/null

echo "== full snapshot"
timed ours_full "$BIN" snapshot "$WORK/ours" "$DATA"
[ -z "${BASELINE_BIN:-}" ] || timed base_full "$BASELINE_BIN" snapshot "$WORK/base" "$DATA"
ID1=$(cut -d' ' -f1 "$WORK/out.ours_full" | head -1)
timed ours_enc_full "$BIN" snapshot "$WORK/ours-enc" "$DATA" "$WORK/key.hex"
timed restic_full restic backup --host bench "$DATA"

echo "== snapshot after a 1% change"
change_one_percent
timed ours_incr "$BIN" snapshot "$WORK/ours" "$DATA"
ID2=$(head -1 "$WORK/out.ours_incr" | cut -d' ' -f1)
[ -z "${BASELINE_BIN:-}" ] || timed base_incr "$BASELINE_BIN" snapshot "$WORK/base" "$DATA"
timed ours_enc_incr "$BIN" snapshot "$WORK/ours-enc" "$DATA" "$WORK/key.hex"
ID2E=$(head -1 "$WORK/out.ours_enc_incr" | cut -d' ' -f1)
timed restic_incr restic backup --host bench "$DATA"
grep -h "new_bytes" "$WORK/out.ours_incr" | sed 's/^/  ours: /'
grep -h "Added to the" "$WORK/out.restic_incr" | sed 's/^/  restic: /'

# Restored small files are kept until the end: deleting 10,000 files right before the next
# timed step would slow its file creations down (see the top). Only the restored large file
# goes after its check, to save space: one inode, and its discards are done when rm returns;
# the sync and pause before the next step let the disk settle.
drop_large() { rm -f "$1/large.bin"; sync; sleep 5; }
echo "== restore with verification"
timed ours_restore "$BIN" restore "$WORK/ours" "$ID2" "$WORK/restore-ours"
same_tree "$DATA" "$WORK/restore-ours"
drop_large "$WORK/restore-ours"
if [ -n "${BASELINE_BIN:-}" ]; then
  timed base_restore "$BASELINE_BIN" restore "$WORK/base" "$(head -1 "$WORK/out.base_incr" | cut -d' ' -f1)" "$WORK/restore-base"
  same_tree "$DATA" "$WORK/restore-base"
  drop_large "$WORK/restore-base"
fi
timed ours_enc_restore "$BIN" restore "$WORK/ours-enc" "$ID2E" "$WORK/restore-ours-enc" "$WORK/key.hex"
same_tree "$DATA" "$WORK/restore-ours-enc"
drop_large "$WORK/restore-ours-enc"
timed restic_restore restic restore latest --host bench --target "$WORK/restore-restic" --verify
same_tree "$DATA" "$WORK/restore-restic$DATA"
: "$ID1"

echo "== load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "| step | ours (plain) | ours (AES-256-GCM) | restic 0.14 | ours/restic (plain) | ours/restic (encrypted) |"
echo "|---|---|---|---|---|---|"
echo "| full snapshot, 1 GiB | ${T_ours_full} s | ${T_ours_enc_full} s | ${T_restic_full} s | $(ratio "$T_ours_full" "$T_restic_full") | $(ratio "$T_ours_enc_full" "$T_restic_full") |"
echo "| snapshot after 1% change | ${T_ours_incr} s | ${T_ours_enc_incr} s | ${T_restic_incr} s | $(ratio "$T_ours_incr" "$T_restic_incr") | $(ratio "$T_ours_enc_incr" "$T_restic_incr") |"
echo "| restore with verification | ${T_ours_restore} s | ${T_ours_enc_restore} s | ${T_restic_restore} s | $(ratio "$T_ours_restore" "$T_restic_restore") | $(ratio "$T_ours_enc_restore" "$T_restic_restore") |"
if [ -n "${BASELINE_BIN:-}" ]; then
  echo
  echo "| step | baseline (plain) | ours (plain) | ours/baseline | baseline/restic |"
  echo "|---|---|---|---|---|"
  echo "| full snapshot, 1 GiB | ${T_base_full} s | ${T_ours_full} s | $(ratio "$T_ours_full" "$T_base_full") | $(ratio "$T_base_full" "$T_restic_full") |"
  echo "| snapshot after 1% change | ${T_base_incr} s | ${T_ours_incr} s | $(ratio "$T_ours_incr" "$T_base_incr") | $(ratio "$T_base_incr" "$T_restic_incr") |"
  echo "| restore with verification | ${T_base_restore} s | ${T_ours_restore} s | $(ratio "$T_ours_restore" "$T_base_restore") | $(ratio "$T_base_restore" "$T_restic_restore") |"
fi
