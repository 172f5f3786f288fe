#!/usr/bin/env bash
# Logistic regression benchmark beside Spark MLlib and scikit-learn (part of `make bench`).
set -euo pipefail
source "$(dirname "$0")/bench-prelude.sh"
cores="$(nproc)"
# Logistic regression: 20,000 x 1280 Gaussian blobs, 5 classes (5,000 held out), multinomial,
# regParam 0.03, elasticNetParam 0 and 0.5, beside Spark MLlib in local[2] (second fit in a
# warm JVM) and scikit-learn (lbfgs; saga for the elastic net), same parameters. The
# features are float32 vectors, as the featurizer writes them (DLP_BENCH_LR_FLOAT=64: float64
# vectors, which dlp computes in f64); the peers compute in f64 either way.
bits="${DLP_BENCH_LR_FLOAT:-32}"
case "$bits" in
  32) lrdir="$DLP_CACHE/bench/lr-blobs-f32"; float_flag=--float32 ;;
  64) lrdir="$DLP_CACHE/bench/lr-blobs"; float_flag= ;;
  *) echo "DLP_BENCH_LR_FLOAT must be 32 or 64, not $bits" >&2; exit 2 ;;
esac
if [ ! -f "$lrdir/test.parquet" ]; then
  "$DLP_PYTHON" tests/python/lr_reference.py data --out "$lrdir" --rows 20000 --test-rows 5000 \
    --dim 1280 --classes 5 --center-std 0.05 --seed 42 $float_flag >/dev/null
fi
echo
echo "logistic regression benchmark: 20000 x 1280 x 5 classes (float$bits features), multinomial, regParam 0.03, $cores cores"
jobs='['
for alpha in 0.0 0.5; do
  jobs+="{\"train\": \"$lrdir/train.parquet\", \"test\": \"$lrdir/test.parquet\", \"params\": {\"family\": \"multinomial\", \"regParam\": 0.03, \"elasticNetParam\": $alpha, \"maxIter\": 100, \"tol\": 1e-6}},"
done
jobs="${jobs%,}]"
spark=$("$DLP_PYTHON" tests/python/lr_reference.py spark --jobs "$jobs" --warm)
printf '%-22s %5s %9s %6s %10s %10s %9s %9s %9s\n' engine alpha "fit s" iters "train acc" "test acc" "non-zero" "vs Spark" "vs sklrn"
for alpha in 0.0 0.5; do
  ours=$("$DLP_BENCH_BIN/dlp-bench-lr" --train "$lrdir/train.parquet" --test "$lrdir/test.parquet" \
    --params "{\"family\": \"multinomial\", \"regParam\": 0.03, \"elasticNetParam\": $alpha}")
  sk=$("$DLP_PYTHON" tests/python/lr_reference.py sklearn --train "$lrdir/train.parquet" \
    --test "$lrdir/test.parquet" --reg-param 0.03 --elastic-net-param "$alpha" --tol 1e-6 --max-iter 100)
  "$DLP_PYTHON" - "$ours" "$spark" "$sk" "$alpha" <<'PY'
import json, sys
o, sp, sk, alpha = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), float(sys.argv[4])
s = next(f for f in sp["fits"] if f["config"]["elasticNetParam"] == alpha)
ours = o["warm_fit_seconds"]
def row(name, secs, it, tr, te, nz, vs_spark="", vs_sk=""):
    print(f"{name:<22} {alpha:5.2f} {secs:9.2f} {it:6d} {tr:10.4f} {te:10.4f} {nz:9d} {vs_spark:>9} {vs_sk:>9}")
# Spark's and scikit-learn's times start from data already in memory (Spark: cache() and a
# count before timing); dlp's prepared fit is the same comparison, its Parquet fit includes
# the scan and materialization.
prep = o["prepared_fit_seconds"]
row("dlp, prepared (cache)", prep, o["iterations"], o["train_accuracy"], o["test_accuracy"], o["non_zeros"],
    f'{s["warm_fit_seconds"] / prep:.2f}x', f'{sk["fit_seconds"] / prep:.2f}x')
row("dlp, from Parquet", ours, o["iterations"], o["train_accuracy"], o["test_accuracy"], o["non_zeros"],
    f'{s["warm_fit_seconds"] / ours:.2f}x', f'{sk["fit_seconds"] / ours:.2f}x')
row("Spark MLlib local[2]", s["warm_fit_seconds"], s["iterations"], s["train_accuracy"], s["test_accuracy"], s["non_zeros"])
row("scikit-learn", sk["fit_seconds"], sk["iterations"], sk["train_accuracy"], sk["test_accuracy"], sk["non_zeros"])
# scikit-learn with the reading of the same Parquet file into NumPy counted: the start
# point of dlp's "from Parquet" row.
sk_loaded = sk["fit_seconds"] + sk["load_seconds"]
row("scikit-learn + loading", sk_loaded, sk["iterations"], sk["train_accuracy"], sk["test_accuracy"], sk["non_zeros"])
print(f'  dlp from Parquet vs scikit-learn with loading ({sk["load_seconds"]:.2f} s): {sk_loaded / ours:.2f}x')
print(f'  dlp: first fit {o["fit_seconds"]:.2f} s, prepare {o["prepare_seconds"]:.2f} s, {o["evaluations"]} loss jobs of {o["job_seconds"] * 1000:.0f} ms '
      f'(compute {o["job_compute_seconds"] * 1000:.0f} ms/job summed over the chunks of {o["parts"]} parts), materialize {o["materialize_seconds"]:.2f} s; '
      f'objective {o["objective"]:.6f} vs Spark {s["objective"]:.6f}; Spark first fit {s["fit_seconds"]:.2f} s')
PY
done
