#!/usr/bin/env bash
# Start the Qdrant server the test suites share (store contract, gRPC, distributed) on
# loopback with a temporary storage, and print `export` lines for VIDX_TEST_QDRANT_URL and
# VIDX_QDRANT_BIN (the fault tests start servers of their own from it, to kill them).
# The binary: $VIDX_QDRANT_BIN, else shared/bin/qdrant in a directory above the repository
# (this project's machines keep an official v1.16.3 build there), else `qdrant` on PATH.
# Usage: eval "$(bash scripts/qdrant-test-server.sh)"; stop it with kill "$VIDX_TEST_QDRANT_PID".
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${VIDX_QDRANT_BIN:-}"
if [ -z "$bin" ]; then
  directory="$root"
  while [ "$directory" != "/" ]; do
    if [ -x "$directory/shared/bin/qdrant" ]; then bin="$directory/shared/bin/qdrant"; break; fi
    directory="$(dirname "$directory")"
  done
fi
if [ -z "$bin" ] && [ -x /work/shared/bin/qdrant ]; then bin=/work/shared/bin/qdrant; fi
if [ -z "$bin" ]; then bin="$(command -v qdrant || true)"; fi
if [ -z "$bin" ]; then
  echo "no Qdrant server binary (set VIDX_QDRANT_BIN, or put it at ../shared/bin/qdrant beside the repository)" >&2
  exit 1
fi
ports="$(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')"
read -r grpc http <<<"$ports"
storage="$(mktemp -d "${TMPDIR:-/tmp}/vidx-qdrant.XXXXXX")"
(
  cd "$storage"
  QDRANT__STORAGE__STORAGE_PATH="$storage/storage" QDRANT__STORAGE__SNAPSHOTS_PATH="$storage/snapshots" \
    QDRANT__SERVICE__HOST=127.0.0.1 QDRANT__SERVICE__GRPC_PORT="$grpc" \
    QDRANT__SERVICE__HTTP_PORT="$http" QDRANT__TELEMETRY_DISABLED=true QDRANT__LOG_LEVEL=WARN \
    exec "$bin" >"$storage/qdrant.log" 2>&1
) &
pid=$!
for _ in $(seq 1 300); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$http/readyz', timeout=1)" 2>/dev/null; then
    echo "export VIDX_TEST_QDRANT_URL=http://127.0.0.1:$grpc VIDX_QDRANT_BIN=$bin VIDX_TEST_QDRANT_PID=$pid VIDX_TEST_QDRANT_STORAGE=$storage"
    echo "Qdrant server for the tests: $bin on 127.0.0.1:$grpc (gRPC), pid $pid" >&2
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "the Qdrant server exited before it was ready:" >&2
    cat "$storage/qdrant.log" >&2
    exit 1
  fi
  sleep 0.2
done
echo "the Qdrant server was not ready within 60 s" >&2
kill "$pid" || true
exit 1
