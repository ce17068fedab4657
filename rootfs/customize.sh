#!/bin/sh
# mmdebstrap customize hook for Cairn roots; $1 is the new root tree.
#
# Runs after every package is installed, before mmdebstrap packs the tarball:
# - builds the initrd Cairn boots with dracut from the tree's own packages, configured by
#   /etc/dracut.conf.d/90-cairn.conf (written by Cairn from the definition's [initrd]);
# - enables systemd-networkd, which Debian ships disabled;
# - drops the apt pin file Cairn used to install the locked versions;
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
rm -f "$root/etc/apt/preferences.d/cairn-lock"
rm -f "$root"/etc/ssh/ssh_host_*
