#!/bin/sh
# mmdebstrap customize hook for Cairn roots; $1 is the new root tree.
#
# Runs after every package is installed, before mmdebstrap packs the tarball:
# - builds the initrd Cairn boots with dracut from the tree's own packages, configured by
#   /etc/dracut.conf.d/90-cairn.conf (written by Cairn from the definition's [initrd]);
# - enables systemd-networkd, which Debian ships disabled;
# - empties /etc/apt/sources.list, which names the build's scratch repository: an image never
#   runs apt, and the lock next to its definition says where every package came from;
# - deletes the SSH host keys openssh-server's postinst made: they are random (so the
#   tarball would differ between runs), secret, and every node makes its own.
# Everything an immutable image must not carry (/boot, host keys, caches, /var) is
# removed or moved later by Cairn itself, on the tar stream.
set -eu
root="$1"
kver=$(ls "$root/usr/lib/modules" | sort -V | tail -n 1)
if [ -z "$kver" ]; then
    echo "cairn: no kernel modules in the tree; is the kernel package installed?" >&2
    exit 1
fi
chroot "$root" dracut --force --reproducible "/boot/initrd.img-$kver" "$kver"
chroot "$root" systemctl enable systemd-networkd.service
printf '# Cairn images are immutable: no apt sources. cairn.lock lists every package.\n' > "$root/etc/apt/sources.list"
rm -f "$root"/etc/ssh/ssh_host_*
