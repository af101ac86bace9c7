#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, property, integration,
# end to end), after installing what they need.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-test.sh
export HF_HUB_OFFLINE=1
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The GPU build compiles here too (no GPU needed): candle's CUDA kernels with the CUDA 13.0
# compiler wheels (scripts/setup-cuda.sh), in a target dir outside the clone so a repeated run
# is fast (the first spends several minutes in candle's kernel build).
(
  eval "$(bash scripts/setup-cuda.sh)"
  export CARGO_TARGET_DIR="${VIDX_CUDA_TARGET:-${XDG_CACHE_HOME:-$HOME/.cache}/vidx/cuda-target}"
  cargo check -p vidx-model --features cuda --all-targets
  cargo check -p vidx-cli --features cuda --all-targets
)
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
