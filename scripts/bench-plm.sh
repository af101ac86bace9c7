#!/usr/bin/env bash
# PerceptionLM CPU benchmark (not a test): vidx's candle port against the reference transformers
# implementation on the same random-weight checkpoint (mid-size by default: 12x384 PE vision tower
# at 448 px, 4x1024 Llama), same inputs and same thread count, in this one script on this one
# machine. Times the vision tower (frames/s), the prefill of a video prompt without the tower
# (tokens/s) and greedy decoding with the KV cache (tokens/s); prints a table with the
# candle/reference ratios and writes JSON (target/bench-plm.json unless --json says otherwise).
# Needs python3 with torch, transformers, timm, safetensors (scripts/requirements-fixtures.txt).
#
#   bash scripts/bench-plm.sh [--frames 8] [--new-tokens 32] [--threads 2] [--repeats 2]
#                             [--vision-layers 12] [--vision-width 384] [--llm-layers 4]
#                             [--llm-hidden 1024] [--out DIR] [--json FILE]
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p vidx-model --example plm_bench
bench="${CARGO_TARGET_DIR:-target}/release/examples/plm_bench"

HF_HUB_OFFLINE=1 exec python3 scripts/bench_plm.py --candle-bin "$bench" "$@"
