#!/usr/bin/env bash
# Benchmarks beside their peers, one run, with ratios.
# Image decoding: the plugin's decoders vs Pillow on ../shared/data/flowers, single-threaded
# and on all cores; full decode, and decode + resize to 224x224.
set -euo pipefail
source "$(dirname "$0")/bench-prelude.sh"
dir="$DLP_DATA/flowers"
cores="$(nproc)"
echo "decode benchmark: $(find "$dir" -iname '*.jpg' | wc -l) JPEGs under $dir, $cores cores, $(date -u +%F)"
printf '%-8s %-7s %12s %16s %16s %8s %20s %8s\n' mode threads "dlp img/s" "pillow img/s" "" ratio "pillow+draft img/s" ratio
for threads in 1 "$cores"; do
  for mode in decode resize; do
    ours=$("$DLP_BENCH_BIN/dlp-bench-decode" --dir "$dir" --threads "$threads" --mode "$mode")
    peer=$("$DLP_PYTHON" bench/decode_pillow.py --dir "$dir" --threads "$threads" --mode "$mode")
    draft="null"
    if [ "$mode" = resize ]; then
      draft=$("$DLP_PYTHON" bench/decode_pillow.py --dir "$dir" --threads "$threads" --mode resize-draft)
    fi
    "$DLP_PYTHON" - "$ours" "$peer" "$draft" <<'PY'
import json, sys
o, p, d = (json.loads(a) for a in sys.argv[1:4])
r = o["images_per_s"] / p["images_per_s"]
line = f'{o["mode"]:<8} {o["threads"]:<7} {o["images_per_s"]:>12.1f} {p["images_per_s"]:>16.1f} {"":>16} {r:>7.2f}x'
if d:
    line += f' {d["images_per_s"]:>20.1f} {o["images_per_s"] / d["images_per_s"]:>7.2f}x'
print(line)
PY
  done
done

# The featurizer's read (issue 21, item 2), one thread: JPEGs that only a model reads are
# decoded at the DCT scale covering its input, then preprocessed as the featurizer
# does; against the same preprocessing after a full-size decode, and the full-size decode alone.
echo "featurizer read, efficientnet_lite0, 1 thread (dlp-bench-decode --mode model / model-exact / decode)"
printf '%-18s %8s %16s %16s %14s %8s %16s\n' images JPEGs "scaled img/s" "full+prep img/s" ratio "" "full decode img/s"
for d in flowers imagenet-sanity; do
  runs=()
  for mode in model model-exact decode; do
    runs+=("$("$DLP_BENCH_BIN/dlp-bench-decode" --dir "$DLP_DATA/$d" --threads 1 --mode "$mode" --passes 3)")
  done
  "$DLP_PYTHON" - "$d" "${runs[@]}" <<'PY'
import json, sys
name = sys.argv[1]
s, e, f = (json.loads(a) for a in sys.argv[2:5])
print(f'{name:<18} {s["images"]:>8} {s["images_per_s"]:>16.1f} {e["images_per_s"]:>16.1f} '
      f'{s["images_per_s"] / e["images_per_s"]:>13.2f}x {"":>8} {f["images_per_s"]:>16.1f} '
      f'(scaled read {s["images_per_s"] / f["images_per_s"]:.2f}x the full-size decode)')
PY
done

# Object storage (a local S3 server) beside local disk.
scripts/bench-s3.sh

# Featurization end to end beside PyTorch.
scripts/bench-featurize.sh

# Logistic regression beside Spark MLlib and scikit-learn.
scripts/bench-lr.sh

scripts/bench-finetune.sh
