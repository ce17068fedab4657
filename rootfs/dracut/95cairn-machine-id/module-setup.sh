#!/bin/bash
# dracut module: carry the node's machine-id from its state partition into /run before the
# switch to the verified root, whose /etc/machine-id is a link to /run/cairn/machine-id.
# Cairn adds it to every initrd it builds (add_dracutmodules in 90-cairn.conf).

check() {
    return 255
}

depends() {
    echo systemd
}

install() {
    inst_multiple mount umount mkdir rmdir head sleep
    inst_script "$moddir/cairn-machine-id.sh" /usr/lib/cairn/cairn-machine-id.sh
    inst_simple "$moddir/cairn-machine-id.service" "$systemdsystemunitdir/cairn-machine-id.service"
    $SYSTEMCTL -q --root "$initdir" enable cairn-machine-id.service
}
