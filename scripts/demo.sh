#!/usr/bin/env bash
# Quick start: install what vidx needs (not what only the tests need), build it, make a
# sample video with subtitles, index it, and search it with a paraphrase.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The quickstart profile (Cargo.toml): optimised only where the demo's work is, so that a
# first build on a small machine is short.
cargo build -q --profile quickstart -p vidx-cli
vidx=target/quickstart/vidx
work=${VIDX_DEMO_DIR:-$(mktemp -d)}
mkdir -p "$work"

cat > "$work/kitchen.srt" <<'SRT'
1
00:00:02,000 --> 00:00:07,000
A chef slices ripe tomatoes on a wooden cutting board.

2
00:00:22,000 --> 00:00:27,000
Children kick a soccer ball across a sunny park.

3
00:00:42,000 --> 00:00:47,000
Heavy snow falls over the mountain pass at night.
SRT
echo "making a 60 s sample video with three scenes ..." >&2
ffmpeg -hide_banner -loglevel error -y -filter_complex \
  "testsrc2=s=640x360:r=25:d=20[a];smptebars=s=640x360:r=25:d=20[b];mandelbrot=s=640x360:r=25,trim=duration=20,setpts=PTS-STARTPTS[c];[a][b][c]concat=n=3:v=1:a=0,format=yuv420p[v]" \
  -map "[v]" -c:v libx264 -preset veryfast -g 50 "$work/kitchen.mp4"

"$vidx" index "$work/kitchen.mp4" --data-dir "$work/data"
echo
echo '$ vidx search "someone cutting vegetables"' >&2
"$vidx" search "someone cutting vegetables" --data-dir "$work/data" --top-k 3
echo
echo "vidx is at $vidx: a quick-start build, unoptimised outside the matrix kernels; for" >&2
echo "real footage build an optimised one: cargo build --release -p vidx-cli (target/release/vidx)" >&2
