#!/bin/bash
# dracut module: Cairn's part of the initrd. Cairn adds it to every initrd it builds
# (add_dracutmodules in 90-cairn.conf).
# - cairn-machine-id: carry the node's machine-id from its state partition into /run before
#   the switch to the verified root, whose /etc/machine-id is a link to /run/cairn/machine-id;
# - cairn-live-cd: on a live boot from Cairn's ISO on a CD-ROM, show the ISO's root and
#   verity partitions through a 512-byte-sector loop device.

check() {
    return 255
}

depends() {
    echo systemd
}

install() {
    inst_multiple mount umount mkdir rmdir head sleep grep losetup flock modprobe
    inst_script "$moddir/cairn-live-cd.sh" /usr/lib/cairn/cairn-live-cd.sh
    inst_simple "$moddir/90-cairn-live.rules" "${udevrulesdir:-/usr/lib/udev/rules.d}/90-cairn-live.rules"
    inst_script "$moddir/cairn-machine-id.sh" /usr/lib/cairn/cairn-machine-id.sh
    inst_simple "$moddir/cairn-machine-id.service" "$systemdsystemunitdir/cairn-machine-id.service"
    $SYSTEMCTL -q --root "$initdir" enable cairn-machine-id.service
}
