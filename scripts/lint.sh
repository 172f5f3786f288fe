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
# The scheduler and the scheduler image's `dlp` without libtorch (dlp-plugin's `torch`
# feature off): a linted check, since the workspace build above unifies the feature on.
# The first run checks the dependencies once (about 10 minutes on 2 cores), later ones
# the three crates (about 5).
cargo check -p dlp-scheduler -p dlp --no-default-features
