#!/usr/bin/env bash
# Object storage beside local disk (part of `make bench`): the flowers read and decoded by
# read_images on the embedded cluster from a local S3-compatible server (moto on loopback)
# and from ../shared/data, one task slot and all cores; listing 10,000 objects.
set -euo pipefail
source "$(dirname "$0")/bench-prelude.sh"
echo
"$CARGO_TARGET_DIR/debug/dlp-bench-s3"
