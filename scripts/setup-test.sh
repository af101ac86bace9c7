#!/usr/bin/env bash
# Install what only the tests need, on top of scripts/setup.sh (scripts/test.sh runs both):
# g++, a headless Chromium with its WebDriver, and the tansu Kafka-protocol broker. Idempotent. Neither is needed to build or run vidx,
# so the quick start (scripts/demo.sh) and the Dockerfiles' build stages do without them.
set -euo pipefail
# shellcheck source=scripts/apt-install.sh
source "$(dirname "$0")/apt-install.sh"

# g++ compiles the CUDA kernels' source for the CPU in services/kernels/tests/kernels_on_cpu.rs;
# chromium and chromium-driver drive the web UI in services/cli/tests/web_ui.rs.
test_packages=(g++ chromium chromium-driver)
apt_install_missing "the tests" "${test_packages[@]}"

# A gRPC client that knows vidx only through server reflection v1alpha
# (services/server/tests/reflection_client.py, run by services/server/tests/grpc_api.rs).
if ! python3 -c "import grpc_reflection.v1alpha, google.protobuf.message_factory" 2>/dev/null; then
  echo "installing grpcio and grpcio-reflection (pip, once)" >&2
  python3 -m pip install --quiet --disable-pip-version-check grpcio grpcio-reflection
fi

# A Kafka-protocol broker for the distributed-mode tests, which start it on loopback with
# in-memory storage (services/testkit/src/local_broker.rs). Built from crates.io once (~10 min).
if ! command -v tansu >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then
  echo "installing the tansu Kafka-protocol broker (cargo install, once)" >&2
  cargo install --locked --quiet tansu --version 0.6.0 --features dynostore
fi
