#!/usr/bin/env bash
# Cairn's disk assembly against the shell reference, on the same root tree.
#
#   bench/assembly.sh [TREE_TARBALL]
#
# Without an argument, a ~700 MiB tree is made from this machine's /usr/lib/x86_64-linux-gnu
# and /usr/bin (a stand-in for a node's root; cached under $CAIRN_BENCH_DIR).
#
# Reference (what one would script by hand, needing root to keep ownership):
#   tar -x → mksquashfs (zstd, same level and block size, all cores) → veritysetup format →
#   objcopy UKI → mkfs.fat + mmd/mcopy ESP → mkfs.ext4 → sfdisk → dd the pieces into the disk.
# Cairn: `cairn build` of the same tarball (no unpacking, no root), everything included
# (manifest hashing and signing too).
#
# Prints each time and the ratio cairn/reference (below 1.0: Cairn is faster).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
work=${CAIRN_BENCH_DIR:-/var/tmp/cairn-bench}
level=${LEVEL:-15}
mkdir -p "$work"
cd "$work"

tree=${1:-}
if [ -z "$tree" ]; then
    tree=$work/tree.tar
    if [ ! -f "$tree" ]; then
        echo "making $tree from /usr/lib/x86_64-linux-gnu and /usr/bin" >&2
        tar --sort=name --xattrs --xattrs-include='*' -cf "$tree" -C / usr/lib/x86_64-linux-gnu usr/bin 2>/dev/null || true
    fi
fi

cargo build --release -q --manifest-path "$here/Cargo.toml" --bin cairn
cairn=$here/target/release/cairn
stub=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
sdboot=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
head -c 8000000 /dev/urandom > kernel.bin
head -c 20000000 /dev/urandom > initrd.bin
export SOURCE_DATE_EPOCH=1700000000

# ---- reference --------------------------------------------------------------------------
ref() {
    rm -rf ref && mkdir -p ref/root
    tar --xattrs --xattrs-include='*' -xpf "$tree" -C ref/root
    mksquashfs ref/root ref/root.sqfs -comp zstd -Xcompression-level "$level" -b 131072 \
        -noappend -quiet -no-progress -xattrs
    veritysetup format ref/root.sqfs ref/verity.img > ref/verity.txt
    printf 'ID=cairn\n' > ref/osrel
    printf 'roothash=%s console=ttyS0' "$(awk '/Root hash/ {print $3}' ref/verity.txt)" > ref/cmdline
    objcopy --add-section .osrel=ref/osrel --change-section-vma .osrel=0x20000 \
        --add-section .cmdline=ref/cmdline --change-section-vma .cmdline=0x30000 \
        --add-section .linux=kernel.bin --change-section-vma .linux=0x2000000 \
        --add-section .initrd=initrd.bin --change-section-vma .initrd=0x3000000 \
        "$stub" ref/uki.efi
    truncate -s 512M ref/esp.img
    mkfs.fat -F 32 -n ESP ref/esp.img > /dev/null
    mmd -i ref/esp.img ::EFI ::EFI/BOOT ::EFI/Linux ::loader
    mcopy -i ref/esp.img "$sdboot" ::EFI/BOOT/BOOTX64.EFI
    mcopy -i ref/esp.img ref/uki.efi ::EFI/Linux/cairn_1.efi
    printf 'timeout 0\n' > ref/loader.conf
    mcopy -i ref/esp.img ref/loader.conf ::loader/loader.conf
    local mib=$((1 << 20))
    truncate -s $(( (1 + 512 + 1024 + 9 + 1024 + 9 + 256 + 1) * mib )) ref/disk.raw
    sfdisk -q ref/disk.raw <<EOF
label: gpt
size=512MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
size=1024MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root-a
size=9MiB, type=2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5, name=verity-a
size=1024MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root-b
size=9MiB, type=2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5, name=verity-b
size=256MiB, type=4D21B016-B534-45C2-A9FB-5C16E091FD2D, name=state
EOF
    dd if=ref/esp.img of=ref/disk.raw bs=1M seek=1 conv=notrunc,sparse status=none
    dd if=ref/root.sqfs of=ref/disk.raw bs=1M seek=513 conv=notrunc status=none
    dd if=ref/verity.img of=ref/disk.raw bs=1M seek=1537 conv=notrunc status=none
    mkfs.ext4 -q -F -L state -E offset=$((2579 * mib)) ref/disk.raw 262144 > /dev/null
    sync -f ref/disk.raw
}

# ---- cairn ------------------------------------------------------------------------------
cat > image.toml <<EOF
version = 1
[image]
name = "bench"
version = "1"
[root]
source = "$tree"
[kernel]
image = "kernel.bin"
initrd = "initrd.bin"
cmdline = ["console=ttyS0"]
[squashfs]
level = $level
[signing]
key = "bench.pem"
EOF
[ -f bench.pem ] || "$cairn" keygen bench.pem > /dev/null
ours() {
    "$cairn" build image.toml --out cairn-out > cairn-summary.txt 2> cairn-log.txt
}

timeit() { local s e; s=$(date +%s.%N); "$@"; e=$(date +%s.%N); echo "$e - $s" | bc; }

echo "tree: $tree ($(du -h "$tree" | cut -f1)), zstd level $level, $(nproc) cores" >&2
# Both start from a cold page cache (needs root; otherwise the tree may be cached for both).
cold() { sync; if [ "$(id -u)" -eq 0 ]; then echo 3 > /proc/sys/vm/drop_caches; fi; }
cold; t_ref=$(timeit ref)
cold; t_ours=$(timeit ours)
sqfs_ref=$(stat -c %s ref/root.sqfs)
sqfs_ours=$(jq -r '.payloads[] | select(.name=="root") | .size' cairn-out/manifest.json 2>/dev/null ||
    python3 -c 'import json;print([p["size"] for p in json.load(open("cairn-out/manifest.json"))["payloads"] if p["name"]=="root"][0])')
printf 'assembly (tree → signed disk)\n'
printf '  reference (tar -x, mksquashfs, veritysetup, objcopy, mkfs.fat+mtools, sfdisk, dd, mkfs.ext4)  %6.1f s  squashfs %d MiB\n' "$t_ref" $((sqfs_ref >> 20))
printf '  cairn build (tar stream → tar2sqfs, own verity/UKI/FAT/GPT, mkfs.ext4, manifest + signature) %6.1f s  squashfs %d MiB\n' "$t_ours" $((sqfs_ours >> 20))
printf '  ratio cairn/reference = %.2f\n' "$(echo "$t_ours / $t_ref" | bc -l)"
sed -n 's/^  stages *//p' cairn-summary.txt | sed 's/^/  cairn stages: /'
