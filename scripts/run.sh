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
scripts/setup.sh
# The same build command as the tests: one feature resolution, so nothing compiles twice.
cargo build -q --workspace --bins --tests
if [ "${1:-}" = "--" ]; then
  shift
  exec "$CARGO_TARGET_DIR/debug/dlp" "$@"
fi
exec "$CARGO_TARGET_DIR/debug/dlp" fit examples/digits.yaml "$@"
