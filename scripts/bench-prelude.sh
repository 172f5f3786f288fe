# Sourced by the benchmark scripts: environment, set-up and the `make test` build, done once
# per `make bench` (scripts/bench.sh exports DLP_BENCH_READY for the scripts it runs).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$DLP_ROOT"
if [ -z "${DLP_BENCH_READY:-}" ]; then
  scripts/setup.sh
  cargo build -q --workspace --bins --tests  # same build as `make test`: nothing recompiled
  export DLP_BENCH_READY=1
fi
