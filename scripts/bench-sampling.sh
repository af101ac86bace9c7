#!/usr/bin/env bash
# Frame-sampling benchmark (not a test): sample 32 frames at 448x448 RGB from every 20 s
# segment of a 2-minute 1080p H.264 file, with vidx (segment by remux, then decode each chunk)
# and with the ffmpeg CLI doing the same sampling (input seek + fps filter + scale), in this
# one script on this one machine. Prints both times and the ratio.
#
#   bash scripts/bench-sampling.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
video="$work/bench-1080p.mp4"
duration=120 segment=20 frames=32 size=448

echo "making a ${duration}s 1080p30 H.264 test video ..." >&2
ffmpeg -hide_banner -loglevel error -y -f lavfi -i "testsrc2=s=1920x1080:r=30:d=$duration" \
  -c:v libx264 -preset veryfast -g 60 -pix_fmt yuv420p "$video"

cargo build --release -q -p vidx-media --example sampling_bench
bench="${CARGO_TARGET_DIR:-target}/release/examples/sampling_bench"

cli_once() {
  local start=0
  while [ "$start" -lt "$duration" ]; do
    # fps=FRAMES/SEGMENT picks FRAMES frames uniformly over the segment, like vidx.
    ffmpeg -hide_banner -loglevel error -ss "$start" -t "$segment" -i "$video" \
      -vf "fps=$frames/$segment,scale=$size:$size" -pix_fmt rgb24 -f rawvideo -y /dev/null
    start=$((start + segment))
  done
}

now() { date +%s.%N; }
best_vidx=999999 best_cli=999999
for run in $(seq "$runs"); do
  result=$("$bench" "$video" "$segment" "$frames" "$size")
  vidx_secs=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['total_secs'])" "$result")
  t0=$(now); cli_once; t1=$(now)
  cli_secs=$(python3 -c "print(round($t1 - $t0, 3))")
  echo "run $run: vidx ${vidx_secs}s ($result), ffmpeg CLI ${cli_secs}s" >&2
  best_vidx=$(python3 -c "print(min($best_vidx, $vidx_secs))")
  best_cli=$(python3 -c "print(min($best_cli, $cli_secs))")
done
python3 - "$best_vidx" "$best_cli" <<'PY'
import json, sys
vidx, cli = float(sys.argv[1]), float(sys.argv[2])
print(json.dumps({"vidx_secs": vidx, "ffmpeg_cli_secs": cli, "cli_over_vidx": round(cli / vidx, 3)}))
print(f"vidx {vidx:.2f}s vs ffmpeg CLI {cli:.2f}s (best of runs): vidx is {cli / vidx:.2f}x the CLI's speed")
PY
