#!/usr/bin/env bash
# The test command: set-up, build the binaries the cluster tests start, run every test.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$DLP_ROOT"
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Binaries and test targets in one feature resolution: the plugin is compiled once.
cargo build --workspace --bins --tests
cargo test --workspace --no-fail-fast "$@"
