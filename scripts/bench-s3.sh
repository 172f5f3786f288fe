#!/usr/bin/env bash
# Object storage beside local disk (part of `make bench`): the flowers read and decoded by
# read_images on the embedded cluster from local S3-compatible servers on loopback and from
# ../shared/data, one task slot and all cores; listing 10,000 objects. The servers:
# s3s-fs (Rust, from crates.io) served by bench/s3-server, which answers like a production
# server (TCP_NODELAY, whole-object GETs sent as one buffer; built here once, about 3 minutes
# on 2 cores; see its Cargo.toml for why), and moto (the tests' server,
# Python; it bounds the rate at its own ~150 requests/s).
set -euo pipefail
source "$(dirname "$0")/bench-prelude.sh"
server="$DLP_CACHE/s3s/bin/dlp-bench-s3-server"
if [ ! -x "$server" ] || [ -n "$(find bench/s3-server -type f -newer "$server")" ]; then
  echo "bench-s3: building bench/s3-server (s3s-fs 0.14.1, production-like GETs) into $DLP_CACHE/s3s"
  cargo install -q --locked --path bench/s3-server --root "$DLP_CACHE/s3s"
fi
echo
"$DLP_BENCH_BIN/dlp-bench-s3" --s3s-fs "$server" --moto
