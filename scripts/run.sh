#!/usr/bin/env bash
# The main job on the embedded default: read the flower photos on an in-process Ballista
# scheduler + executor and print images per class and invalid images.
# Usage: scripts/run.sh [dlp images arguments]   (default: ../shared/data/flowers)
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$DLP_ROOT"
scripts/setup.sh
cargo build -q -p dlp --bin dlp
if [ $# -eq 0 ]; then set -- images "$DLP_DATA/flowers"; fi
exec "$CARGO_TARGET_DIR/debug/dlp" "$@"
