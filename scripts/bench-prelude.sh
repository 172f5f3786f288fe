# Sourced by the benchmark scripts: environment, set-up and the benchmarks' build, done once
# per `make bench` (scripts/bench.sh exports DLP_BENCH_READY for the scripts it runs).
# The benchmarks measure the build users run: the release profile, as in the container
# images (the first release build takes about 67 minutes on 2 cores; later ones rebuild only
# what changed). DLP_BENCH_PROFILE=dev measures make test's build instead (dependencies at
# opt-level 1), for a quick look.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$DLP_ROOT"
profile="${DLP_BENCH_PROFILE:-release}"
case "$profile" in
  release) export DLP_BENCH_BIN="$CARGO_TARGET_DIR/release" ;;
  dev) export DLP_BENCH_BIN="$CARGO_TARGET_DIR/debug" ;;
  *) echo "DLP_BENCH_PROFILE must be release or dev, not '$profile'" >&2; exit 2 ;;
esac
if [ -z "${DLP_BENCH_READY:-}" ]; then
  scripts/setup.sh
  if [ "$profile" = release ]; then
    [ -x "$DLP_BENCH_BIN/dlp-bench-s3" ] ||
      echo "bench: building the benchmarks with the release profile (about 67 minutes on 2 cores the first time)" >&2
    cargo build -q --release -p dlp-tests --bins
  else
    cargo build -q --workspace --bins --tests  # same build as `make test`: nothing recompiled
  fi
  export DLP_BENCH_READY=1
fi
