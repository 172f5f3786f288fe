#!/usr/bin/env bash
# Formatting, and clippy with warnings as errors. env.sh makes every build of the workspace
# a clippy build (RUSTC_WORKSPACE_WRAPPER=clippy-driver), so this is `cargo build` of every
# target: the build's own artifacts, no separate `cargo check` of the dependencies.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$DLP_ROOT"
cargo fmt --all -- --check
if [ -z "${RUSTC_WORKSPACE_WRAPPER:-}" ]; then
  cargo clippy --workspace --all-targets -- -D warnings
else
  cargo build --workspace --bins --tests
fi
