#!/usr/bin/env bash
# `cairn flash` against `dd bs=4M conv=fsync` and `bmaptool copy`, writing the same image to
# a file (and, as root where losetup works, to a loop device), page cache dropped before
# each run. The goal for the default image: cairn flash in at most 0.3 of dd's time.
#
#   bench/flash.sh [BUILD_DIR]     (default: the QEMU tests' image, target/qemu-tests/node)
#
# cairn flash checks the signature, writes the data ranges, fsyncs and reads every range
# back past the page cache; dd writes every byte and checks nothing; bmaptool writes the
# mapped ranges, checking each range's sha256 as it reads the image, and fsyncs.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/target/qemu-tests/node}
cairn=$here/target/release/cairn
work=${CAIRN_BENCH_DIR:-/var/tmp/cairn-bench}/flash
mkdir -p "$work"
[ -x "$cairn" ] || { echo "build the workspace first: cargo build --release" >&2; exit 1; }
[ -f "$build/disk.raw" ] || { echo "$build/disk.raw is missing" >&2; exit 1; }
command -v bmaptool > /dev/null || { echo "bmaptool is missing (apt-get install bmap-tools)" >&2; exit 1; }

bmap=$work/disk.raw.bmap
if [ -f "$build/disk.raw.bmap" ]; then
    cp "$build/disk.raw.bmap" "$bmap"
else
    # The build's own bmap needs `--format bmap`; bmaptool's from the file's holes is the
    # same ranges for Cairn's sparse images.
    bmaptool create -o "$bmap" "$build/disk.raw"
fi

drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
secs() { local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null 2>&1; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }

run() {   # target
    local t=$1 dd_s bm_s ca_s
    rm -f "$t"; drop
    dd_s=$(secs dd if="$build/disk.raw" of="$t" bs=4M conv=fsync)
    rm -f "$t"; drop
    bm_s=$(secs bmaptool copy --bmap "$bmap" "$build/disk.raw" "$t")
    rm -f "$t"; drop
    ca_s=$(secs "$cairn" flash "$build" "$t" --yes)
    cmp -s "$build/disk.raw" "$t" || { echo "cairn flash wrote something else to $t" >&2; exit 1; }
    printf '%-34s dd %6.2f s   bmaptool %6.2f s   cairn flash %6.2f s   cairn/dd %.3f   cairn/bmaptool %.3f\n' \
        "$2" "$dd_s" "$bm_s" "$ca_s" "$(echo "$ca_s / $dd_s" | bc -l)" "$(echo "$ca_s / $bm_s" | bc -l)"
}

size=$(stat -c %s "$build/disk.raw")
data=$(du -B1 "$build/disk.raw" | cut -f1)
echo "image $build/disk.raw: $((size >> 20)) MiB, $((data >> 20)) MiB allocated"
run "$work/target.raw" "to a file"
if [ "$(id -u)" -eq 0 ] && back=$work/loop.img && truncate -s $((size + (64 << 20))) "$back" \
    && dev=$(losetup -f --show "$back" 2> /dev/null); then
    trap 'losetup -d "$dev"' EXIT
    lrun() {
        local dd_s bm_s ca_s
        drop; dd_s=$(secs dd if="$build/disk.raw" of="$dev" bs=4M conv=fsync)
        drop; bm_s=$(secs bmaptool copy --bmap "$bmap" "$build/disk.raw" "$dev")
        drop; ca_s=$(secs "$cairn" flash "$build" "$dev" --yes)
        cmp -s -n "$size" "$build/disk.raw" "$dev" || { echo "cairn flash wrote something else to $dev" >&2; exit 1; }
        printf '%-34s dd %6.2f s   bmaptool %6.2f s   cairn flash %6.2f s   cairn/dd %.3f   cairn/bmaptool %.3f\n' \
            "to a loop device ($dev)" "$dd_s" "$bm_s" "$ca_s" "$(echo "$ca_s / $dd_s" | bc -l)" "$(echo "$ca_s / $bm_s" | bc -l)"
    }
    lrun
fi
rm -f "$work/target.raw"
