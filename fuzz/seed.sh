#!/bin/sh
# Copy the parsers' test fixtures into the fuzz corpora as seeds (run from the repo root).
set -eu
f=node/tests/fixtures
c=node-config/tests/fixtures
mkdir -p fuzz/corpus/node_toml fuzz/corpus/cairn_drive fuzz/corpus/nocloud_drive fuzz/corpus/config2_drive
for t in "$c"/node-config/*/node.toml "$c"/node-config/bad/*.toml "$f"/cairn/*/node.toml; do
    cp "$t" "fuzz/corpus/node_toml/$(echo "$t" | tr / _)"
    { printf '\001'; head -c 64 /dev/zero; cat "$t"; } > "fuzz/corpus/cairn_drive/$(echo "$t" | tr / _)"
done
for d in "$f"/nocloud/*/; do
    { cat "$d/meta-data" 2>/dev/null || true; printf '\000'; cat "$d/user-data" 2>/dev/null || true; printf '\000';
      cat "$d/network-config" 2>/dev/null || true; } > "fuzz/corpus/nocloud_drive/$(basename "$d")"
done
for d in "$f"/config-2/*/; do
    { cat "$d/openstack/latest/meta_data.json"; printf '\000';
      cat "$d/openstack/latest/network_data.json" 2>/dev/null || true; } > "fuzz/corpus/config2_drive/$(basename "$d")"
done
# Bundle manifests: the one of a real build's update.cairn, if there is one.
mkdir -p fuzz/corpus/bundle
for b in out/*/update.cairn target/qemu-tests/*/update.cairn; do
    [ -f "$b" ] || continue
    python3 -c 'import sys,struct; d=open(sys.argv[1],"rb").read(8192); n=struct.unpack_from("<I",d,12)[0]; sys.stdout.buffer.write(d[32:32+n]+b"\0"+b"\0"*64)' "$b" \
        > "fuzz/corpus/bundle/$(echo "$b" | tr / _)"
done
# Tokens: the documented example, and the one in the node.toml fixtures.
mkdir -p fuzz/corpus/token fuzz/corpus/audit_log
printf 'ck1.6QZ4B2K9TD.VX3Q7M2K4P8R1C6J9W5T2N7H3F-4JPG' > fuzz/corpus/token/example
printf 'ck1.6qz4b2k9td.vx3q7m2k4p8r1c6j9w5t2n7h3f-4jpg\n' > fuzz/corpus/token/lower-case
