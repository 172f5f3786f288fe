#!/usr/bin/env bash
# Object storage beside local disk (part of `make bench`): the flowers read and decoded by
# read_images on the embedded cluster from local S3-compatible servers on loopback and from
# ../shared/data, one task slot and all cores; listing 10,000 objects. The servers:
# s3s-fs (Rust, from crates.io; installed here once, about 3 minutes on 2 cores), and moto
# (the tests' server, Python; it bounds the rate at its own ~150 requests/s).
set -euo pipefail
source "$(dirname "$0")/bench-prelude.sh"
s3s="$DLP_CACHE/s3s/bin/s3s-fs"
if [ ! -x "$s3s" ]; then
  echo "bench-s3: installing s3s-fs 0.14.1 (an S3 server in Rust) into $DLP_CACHE/s3s"
  cargo install -q s3s-fs --version 0.14.1 --features binary --locked --root "$DLP_CACHE/s3s"
fi
echo
"$CARGO_TARGET_DIR/debug/dlp-bench-s3" --s3s-fs "$s3s" --moto
