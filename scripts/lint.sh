#!/usr/bin/env bash
# Formatting and clippy with warnings as errors.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$DLP_ROOT"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
