#!/usr/bin/env bash
# Idempotent set-up for building, running and testing: system build tools (nasm for
# libjpeg-turbo's SIMD), and a Python venv with the test clients and benchmark peers.
# Usage: scripts/setup.sh [build|all]   (build: only what compiling needs)
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
