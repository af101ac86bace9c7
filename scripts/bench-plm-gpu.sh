#!/usr/bin/env bash
# PerceptionLM on a GPU: vidx's candle port (built with the `cuda` feature) against the
# reference transformers implementation, Perception-LM-1B shapes with random weights, 32-frame
# segments at batch 1, 8 and 32 (scripts/bench_plm_device.py says what is timed). Not a test.
#
#   bash scripts/bench-plm-gpu.sh build     # here (no GPU needed): the stripped release binary
#                                           # with CUDA into .device/plm_bench.xz, and the pinned
#                                           # reference wheels (transformers, timm) into .device/
#   bash scripts/bench-plm-gpu.sh run [ARGS] # on the GPU machine: JSON + a table (ARGS go to
#                                           # bench_plm_device.py, e.g. --batches 1,8)
#   bash scripts/bench-plm-gpu.sh cpu-check # here: a CPU build and a small CPU config, end to
#                                           # end, so the script is known to work before a GPU
#
# `.device/` is git-ignored; a device run carries it. The GPU machine needs the NVIDIA driver
# (CUDA 13.0), python3 with torch and the cuBLAS/cuRAND/NVRTC 13 libraries (PyTorch's wheels
# carry them; they are found through python's `nvidia` packages).
set -euo pipefail
cd "$(dirname "$0")/.."

stage=.device
mode="${1:-}"
[ $# -gt 0 ] && shift

case "$mode" in
  build)
    eval "$(bash scripts/setup-cuda.sh --link)"
    export CARGO_TARGET_DIR="${VIDX_CUDA_TARGET:-${XDG_CACHE_HOME:-$HOME/.cache}/vidx/cuda-target}"
    cargo build --release -p vidx-model --features cuda --example plm_bench
    mkdir -p "$stage/wheels"
    # Stripped (~45 MiB) and xz-compressed: what a device run carries is limited to 64 MiB.
    strip -o "$stage/plm_bench" "$CARGO_TARGET_DIR/release/examples/plm_bench"
    xz -T0 -6 -f "$stage/plm_bench"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      -d "$stage/wheels" transformers==5.24.0 timm==1.0.31
    ls -la "$stage" "$stage/wheels"
    ;;
  run)
    [ -f "$stage/plm_bench.xz" ] || { echo "$stage/plm_bench.xz missing: run 'bench-plm-gpu.sh build' first" >&2; exit 1; }
    bin=/tmp/vidx-plm_bench
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$stage/plm_bench.xz" "$bin"
    chmod +x "$bin"
    # The reference stack pinned as in scripts/requirements-fixtures.txt.
    if ls "$stage"/wheels/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/vidx-site "$stage"/wheels/*.whl
      export PYTHONPATH="/tmp/vidx-site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    # cuBLAS, cuRAND, NVRTC 13 from python's nvidia packages (PyTorch's), the driver's libcuda.
    libs=$(python3 - <<'EOF'
import glob, os, sys
dirs = set()
for path in sys.path:
    for lib in ("libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libnvrtc.so.13"):
        for found in glob.glob(os.path.join(path, "nvidia", "**", lib), recursive=True):
            dirs.add(os.path.dirname(found))
print(":".join(sorted(dirs)))
EOF
)
    export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    PYTHONUNBUFFERED=1 exec python3 scripts/bench_plm_device.py --candle-bin "$bin" "$@"
    ;;
  cpu-check)
    cargo build --release -q -p vidx-model --example plm_bench
    bin="${CARGO_TARGET_DIR:-target}/release/examples/plm_bench"
    RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}" PYTHONUNBUFFERED=1 exec python3 scripts/bench_plm_device.py \
      --candle-bin "$bin" --device cpu --small --json target/bench-plm-device-cpu.json "$@"
    ;;
  *)
    echo "usage: bench-plm-gpu.sh build | run [ARGS] | cpu-check [ARGS]" >&2
    exit 2
    ;;
esac
