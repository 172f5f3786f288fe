#!/usr/bin/env bash
# The test command: set-up, build the binaries the cluster tests start, run every test.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$DLP_ROOT"
scripts/setup.sh nokube
# The Kubernetes API server (a Go build of about 7 minutes on a fresh machine, at once when
# cached) builds beside the cargo build, at a lower priority, in the time cargo leaves a core
# idle; the tests wait for it.
mkdir -p "$DLP_CACHE"
kube_log="$DLP_CACHE/kube-apiserver-setup.log"
setsid nice -n 5 scripts/kube-apiserver.sh build >"$kube_log" 2>&1 &
kube=$!
trap 'kill -- -"$kube" 2>/dev/null || true' EXIT
cargo fmt --all -- --check
# Binaries and test targets in one feature resolution: the plugin is compiled once. env.sh
# makes this a clippy build (warnings are errors): lints without a second compile of the
# dependencies.
cargo build --workspace --bins --tests
if ! wait "$kube"; then
  cat "$kube_log" >&2
  echo "test: building the Kubernetes API server failed (log above: $kube_log)" >&2
  exit 1
fi
trap - EXIT
cat "$kube_log"
cargo test --workspace --no-fail-fast "$@"
