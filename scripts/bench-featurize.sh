#!/usr/bin/env bash
# Featurization benchmark beside PyTorch (part of `make bench`).
set -euo pipefail
source "$(dirname "$0")/bench-prelude.sh"
dir="$DLP_DATA/flowers"
# Featurization end to end: JPEG files -> feature vectors, EfficientNet-Lite0, 2 threads,
# beside three PyTorch + Pillow loops (same preprocessing ops, 2 threads):
# - eager: the `nn.Module` from the PyPI wheel as a PyTorch user builds it, NCHW batches:
#   the sparkdl-style loop issue 21 names;
# - plain: the same unfused model's frozen trace (`export.py --plain`), NCHW batches;
# - optimized: the zoo's own file (BatchNorm folded, ReLU6 / padding / adds fused into
#   oneDNN convolutions, weights prepacked, features without the classifier) with
#   channels-last batches, as dlp runs it: the best a Python user could do with the same model;
# and, as a ceiling, the optimized loop's forward passes alone (one preprocessed batch run as
# many times as the flowers make batches): what any featurizer running this file with these
# batches on these cores reaches if decoding, resizing and everything else cost nothing.
plain_dir="$DLP_CACHE/bench/models"
export_sha=$(sha256sum models/export.py | cut -d' ' -f1)
if [ "$(cat "$plain_dir/.export-sha256" 2>/dev/null)" != "$export_sha" ]; then
  mkdir -p "$plain_dir"
  "$DLP_PYTHON" models/export.py --out "$plain_dir" --models efficientnet_lite0 --plain
  echo "$export_sha" > "$plain_dir/.export-sha256"
fi
# dlp runs with its default batch size (auto: 4 on a CPU); the PyTorch loops with the same
# batches (they ran at the same speed with 4 and 16: 55.4 and 55.7 images/s, 2026-12-03).
batch=4
echo
echo "featurize benchmark: efficientnet_lite0, batch $batch (dlp: its default), 2 threads, all flowers"
ours=$("$DLP_BENCH_BIN/dlp-bench-featurize" --dir "$dir" --threads 2)
files_json=$("$DLP_PYTHON" -c "
import json, os, sys
fs = sorted(os.path.join(d, n) for d, _, ns in os.walk(sys.argv[1]) for n in ns if n.lower().endswith('.jpg'))
print(json.dumps(fs))" "$dir")
manifest="$DLP_MODEL_DIR/efficientnet_lite0.yaml"
args=$("$DLP_PYTHON" - "$manifest" "$files_json" "$batch" <<'PY'
import json, sys
m = {}
for line in open(sys.argv[1]):
    if ":" in line and not line.startswith(" "):
        k, v = line.split(":", 1)
        m[k.strip()] = v.strip().strip('"')
mdir = sys.argv[1].rsplit("/", 1)[0]
print(json.dumps({"model": f"{mdir}/{m['file']}", "height": 224, "width": 224, "resize": m["resize"],
                  "scale": 1 / 255, "mean": json.loads(m["mean"]), "std": json.loads(m["std"]),
                  "files": json.loads(sys.argv[2]), "out": "/tmp/dlp-bench-ref.f32", "batch": int(sys.argv[3]),
                  "threads": 2}))
PY
)
# One PyTorch loop: the arguments above with $1 (JSON) merged in; prints its timing JSON and
# its peak RSS in KB on one line each.
peer() {
  local a
  a=$("$DLP_PYTHON" -c 'import json, sys; a = json.loads(sys.argv[1]); a.update(json.loads(sys.argv[2])); print(json.dumps(a))' "$args" "$1")
  /usr/bin/time -f '%M' -o /tmp/dlp-bench-ref.rss "$DLP_PYTHON" tests/python/torch_reference.py "$a"
  cat /tmp/dlp-bench-ref.rss
}
eager=$(peer '{"eager": "efficientnet_lite0"}')
plain=$(peer "{\"model\": \"$plain_dir/efficientnet_lite0.plain.pt\"}")
optimized=$(peer '{"channels_last": true, "prepack": true, "features_method": true}')
ceiling=$(peer '{"channels_last": true, "prepack": true, "features_method": true, "forward_only": true}')
"$DLP_PYTHON" - "$ours" "$eager" "$plain" "$optimized" "$ceiling" <<'PY'
import json, sys
o = json.loads(sys.argv[1])
print(f'dlp (embedded cluster)     {o["images_per_s"]:7.2f} images/s  peak RSS {o["peak_rss_mb"]:.0f} MB  ({o["images"]} images, {o["seconds"]:.1f} s)')
ratios = []
for name, arg in [("eager", sys.argv[2]), ("plain (frozen trace)", sys.argv[3]), ("optimized, channels-last", sys.argv[4])]:
    timing, rss = arg.strip().split("\n")
    p = json.loads(timing)
    print(f'PyTorch + Pillow, {name:24s} {p["images_per_s"]:7.2f} images/s  peak RSS {int(rss) / 1024:.0f} MB  ({p["images"]} images, {p["seconds"]:.1f} s)')
    ratios.append(f'{o["images_per_s"] / p["images_per_s"]:.2f}x the {name.split(",")[0].split(" (")[0]} loop')
print("ratio                      " + ", ".join(ratios))
c = json.loads(sys.argv[5].strip().split("\n")[0])["images_per_s"]
opt = json.loads(sys.argv[4].strip().split("\n")[0])["images_per_s"]
print(f'ceiling: forward passes alone {c:7.2f} images/s = {c / opt:.2f}x the optimized loop; '
      f'dlp is at {o["images_per_s"] / c:.0%} of it')
PY
