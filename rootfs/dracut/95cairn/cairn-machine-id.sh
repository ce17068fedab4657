#!/bin/sh
# Copy var/lib/cairn/machine-id from the state partition (GPT name "state", mounted
# read-only) to /run/cairn/machine-id. Never fails the boot: without it systemd makes a
# machine-id, as on a first boot.
#
# The mount replays the file system's journal when a power cut left one (a read-only mount
# of a writable device does): with "noload" a machine-id saved shortly before the cut, still
# only in the journal, was not seen and the node came back with a new identity.
mkdir -p /run/cairn
if grep -qw cairn.live /proc/cmdline; then
    echo "cairn: live system: no state partition, /var is in memory; the machine-id is made anew"
    exit 0
fi
dev=/dev/disk/by-partlabel/state
n=0
while [ ! -b "$dev" ] && [ "$n" -lt 15 ]; do
    sleep 1
    n=$((n + 1))
done
if [ ! -b "$dev" ]; then
    echo "cairn: no state partition; the machine-id is made anew"
    exit 0
fi
mnt=/run/cairn/state-ro
mkdir -p "$mnt"
id=""
if mount -t ext4 -o ro "$dev" "$mnt" 2>/dev/null; then
    id=$(head -c 32 "$mnt/lib/cairn/machine-id" 2>/dev/null || true)
    umount "$mnt"
fi
rmdir "$mnt" 2>/dev/null || true
case "$id" in
    "") echo "cairn: no saved machine-id (first boot); systemd makes one" ;;
    *[!0-9a-f]*) echo "cairn: the saved machine-id is not 32 hex digits; systemd makes one" ;;
    *)
        if [ "${#id}" -eq 32 ]; then
            printf '%s\n' "$id" > /run/cairn/machine-id
            echo "cairn: machine-id $id from the state partition"
        else
            echo "cairn: the saved machine-id is not 32 hex digits; systemd makes one"
        fi
        ;;
esac
exit 0
