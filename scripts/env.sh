# Sourced by the project's scripts: one persistent build directory and cache outside the
# clone, so that fresh clones (and CI) reuse earlier builds and set-up.
export DLP_CACHE="${DLP_CACHE:-$HOME/.cache/dlp}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$DLP_CACHE/target}"
export DLP_VENV="${DLP_VENV:-$DLP_CACHE/venv}"
export DLP_PYTHON="$DLP_VENV/bin/python"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
DLP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DLP_ROOT
export DLP_DATA="${DLP_DATA:-$DLP_ROOT/../shared/data}"
# libtorch for `tch` comes from the venv's PyTorch wheel (torch-sys: LIBTORCH_USE_PYTORCH).
export VIRTUAL_ENV="$DLP_VENV"
export PATH="$DLP_VENV/bin:$DLP_CACHE/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export DLP_MODEL_DIR="${DLP_MODEL_DIR:-$DLP_CACHE/models}"
# Every build lints the workspace's own crates as it compiles them, with warnings as errors
# (what `cargo clippy -- -D warnings` does, but on the build's artifacts): the dependencies
# compile once instead of once for clippy's check and again for the build, which saves about
# 17 minutes of a cold CI run on 2 cores. DLP_NO_CLIPPY=1 builds with plain rustc.
if [ -z "${DLP_NO_CLIPPY:-}" ] && command -v clippy-driver >/dev/null 2>&1; then
  RUSTC_WORKSPACE_WRAPPER="$(command -v clippy-driver)"
  export RUSTC_WORKSPACE_WRAPPER
  export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
fi
