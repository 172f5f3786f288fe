#!/usr/bin/env bash
# The main job on the embedded default: transfer learning on handwritten digits
# (scikit-learn's, written as PNG folders by the set-up): EfficientNet-Lite0 features +
# logistic regression, metrics printed, model and confusion matrix plot written.
# Usage: scripts/run.sh                      the digits job (examples/digits.yaml)
#        scripts/run.sh --data DIR           the same job on your folder (one sub-folder per class)
#        scripts/run.sh -- <dlp arguments>   any dlp command, e.g. -- images ../shared/data/flowers
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$DLP_ROOT"
# Only what running needs: no Java, pyspark, test clients, Kubernetes tools or test binaries.
scripts/setup.sh run
# Only the binaries. The job needs just `dlp`; the scheduler and executor are named too so
# that the dependencies resolve with the same features as `make test`'s build (alone, `dlp`
# would compile Parquet, DataFusion and tonic a second time, with other features).
[ -x "$CARGO_TARGET_DIR/debug/dlp" ] || echo "run: building dlp (the first build takes about half an hour on 2 cores)" >&2
cargo build -q --bins -p dlp -p dlp-scheduler -p dlp-executor
if [ "${1:-}" = "--" ]; then
  shift
  exec "$CARGO_TARGET_DIR/debug/dlp" "$@"
fi
# The digits the set-up wrote (under $DLP_CACHE), unless the caller names other data.
case " $* " in
  *" --data "*|*" --data="*) exec "$CARGO_TARGET_DIR/debug/dlp" fit examples/digits.yaml "$@" ;;
  *) exec "$CARGO_TARGET_DIR/debug/dlp" fit examples/digits.yaml --data "$DLP_CACHE/data/digits" "$@" ;;
esac
