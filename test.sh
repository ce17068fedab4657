#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, artifact tests against the
# reference tools. Installs what it needs first (Debian 12; root or sudo).
set -euo pipefail
cd "$(dirname "$0")"

scripts/install-deps
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
