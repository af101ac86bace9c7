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
  # One invocation for both crates: their dependencies are resolved and checked once.
  cargo check -p vidx-model -p vidx-cli --features vidx-cli/cuda --all-targets
)
# The Qdrant server the distributed-path suites run against (a missing binary fails the run,
# never skips those tests); stopped when this script exits.
eval "$(bash scripts/qdrant-test-server.sh)"
trap 'kill "$VIDX_TEST_QDRANT_PID" 2>/dev/null || true; rm -rf "$VIDX_TEST_QDRANT_STORAGE"' EXIT
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
