#!/usr/bin/env bash
# The edit-rebuild loop: what a `cairn build --dev` costs after one overlay file changed,
# against a release build of the same inputs, and whether a --dev build depends on what the
# cache held.
#
#   bench/rebuild.sh [DEFINITION]        (default images/node.toml)
#
# Steps, all with one private cache ($CAIRN_BENCH_CACHE, default a new temporary directory,
# so the first build is cold: packages fetched, mmdebstrap run):
#   1. cold --dev build, overlay file = A            → sha256 of disk.raw and update.cairn
#   2. the overlay file changes to B; warm --dev build → T_dev
#   3. release build of the same inputs (B)           → T_release
#   4. the overlay file back to A; warm --dev build   → must equal step 1 byte for byte
# Prints the times and T_dev / T_release (the goal is ≤ 0.10). Needs the network for step 1
# unless $CAIRN_BENCH_CACHE is already warm.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
def=${1:-images/node.toml}
work=$(mktemp -d /var/tmp/cairn-rebuild.XXXXXX)
trap 'rm -rf "$work"' EXIT
export CAIRN_CACHE_DIR=${CAIRN_BENCH_CACHE:-$work/cache}
export SOURCE_DATE_EPOCH=1700000000
export XDG_DATA_HOME=$work/xdg

cd "$here"
cargo build --release -q --workspace
cairn=$here/target/release/cairn
mkdir -p "$work/overlay/etc"

# build NAME FLAGS... → prints the seconds it took; output in $work/NAME
build() {
    local name=$1; shift
    local t0 t1
    t0=$(date +%s.%N)
    "$cairn" build "$def" --overlay "$work/overlay" --out "$work/$name" "$@" > "$work/$name.log" 2>&1 \
        || { cat "$work/$name.log" >&2; exit 1; }
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}
digest() { cat "$work/$1/disk.raw" "$work/$1/update.cairn" | sha256sum | cut -c1-64; }

echo "A: the file as first built" > "$work/overlay/etc/cairn-bench"
t_cold=$(build cold --dev)
echo "B: one line changed" > "$work/overlay/etc/cairn-bench"
t_dev=$(build dev --dev)
t_rel=$(build release)
echo "A: the file as first built" > "$work/overlay/etc/cairn-bench"
t_warm=$(build warm --dev)

cold=$(digest cold)
warm=$(digest warm)
printf 'cold --dev build (empty cache)        %6.1f s  %s\n' "$t_cold" "$cold"
printf 'warm --dev build of the same inputs   %6.1f s  %s\n' "$t_warm" "$warm"
printf 'release build, one file changed       %6.1f s\n' "$t_rel"
printf -- '--dev build, the same change          %6.1f s\n' "$t_dev"
printf 'ratio --dev / release                 %6.3f   (goal ≤ 0.10)\n' "$(awk -v a="$t_dev" -v b="$t_rel" 'BEGIN { print a / b }')"
grep -h "root fs" "$work/release.log" "$work/dev.log" | sed 's/^ */sizes: /'
if [ "$cold" != "$warm" ]; then
    echo "FAIL: a warm --dev build differs from a cold one" >&2
    exit 1
fi
echo "ok: the warm --dev build equals the cold one byte for byte"
