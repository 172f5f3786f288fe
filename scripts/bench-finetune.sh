#!/usr/bin/env bash
# Fine-tuning benchmark beside the PyTorch reference loop (part of `make bench`).
set -euo pipefail
source "$(dirname "$0")/bench-prelude.sh"
# EfficientNet-Lite0 on 128 flowers (64 daisy, 64 tulips), batch 32, SGD, 2 threads: epoch
# images/s for the head only, the last block, and every layer, beside PyTorch running the
# same TorchScript file, weights, images and optimizer (frozen stages once, and in every
# step as a plain loop does).
echo
"$DLP_BENCH_BIN/dlp-bench-finetune" --dir "$DLP_DATA/flowers" --classes daisy,tulips \
  --per-class 64 --batch 32 --threads 2 --modes "head=5,blocks:1=3,blocks:4=2,all=2" |
  grep -v '^{'
