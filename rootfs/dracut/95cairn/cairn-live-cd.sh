#!/bin/sh
# Run by udev in the initrd for a CD-ROM device ($1), on a live boot only (cairn.live on
# the command line): Cairn's live ISO carries its root and verity partitions in a GPT
# written in 512-byte sectors, which the kernel does not find on a CD's 2048-byte ones.
# A read-only loop device with 512-byte sectors and partition scanning over the CD shows
# them, with the partition UUIDs roothash= names, so the usual verity setup finds them.
# Never fails: without it the boot waits for the root and says which one.
dev="$1"
grep -qw cairn.live /proc/cmdline || exit 0
[ -b "$dev" ] || exit 0
mkdir -p /run/cairn
exec 9>/run/cairn/live-cd.lock
flock 9
if [ -n "$(losetup -j "$dev" 2>/dev/null)" ]; then
    exit 0
fi
modprobe -q loop 2>/dev/null
if loop=$(losetup --find --show --read-only --partscan --sector-size 512 "$dev" 2>&1); then
    echo "cairn: live medium $dev attached as $loop" > /dev/kmsg
else
    echo "cairn: cannot attach live medium $dev: $loop" > /dev/kmsg
fi
exit 0
