#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, artifact tests against the
# reference tools, and QEMU boot tests of the default image. Installs what it needs
# first (Debian 12; root or sudo). The Debian package and root-tree cache lives in
# $CAIRN_CACHE_DIR (default ~/.cache/cairn), so a second run does not download again.
set -euo pipefail
cd "$(dirname "$0")"

scripts/install-deps
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The QEMU tests drive the release binaries, as a user would.
cargo build --release --workspace --locked
cargo test --workspace --locked
