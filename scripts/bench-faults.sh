#!/usr/bin/env bash
# The cluster benchmark of the fault harness (services/cli/tests/faults.rs,
# bench_cluster_throughput_and_recovery): `vidx run` worker processes (1, 2, 3) on the Qdrant
# server against `vidx index` on the same video, and the recovery after a worker's SIGKILL.
# The dev profile (dependencies optimised, as Cargo.toml sets it: the models, FFmpeg and
# Qdrant run optimised; a release build only makes vidx's own glue faster, on both sides of
# the ratios). The JSON goes to bench/results/<month>-cluster-faults.json with the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
out="bench/results/$(date +%Y-%m)-cluster-faults.json"
raw="$(cargo test -p vidx-cli --test faults -- --ignored --nocapture --exact \
  bench_cluster_throughput_and_recovery 2>/dev/null | sed -n '/^{/,/^}/p')"
python3 - "$out" <<PY
import json, os, platform, subprocess, sys
report = json.loads('''$raw''')
report["machine"] = {"cpus": os.cpu_count(), "kernel": platform.release(),
                     "rustc": subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()}
report["command"] = "bash scripts/bench-faults.sh"
report["profile"] = "dev (dependencies optimised)"
json.dump(report, open(sys.argv[1], "w"), indent=2)
print(json.dumps(report, indent=2))
PY
