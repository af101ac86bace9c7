#!/usr/bin/env bash
# A CUDA 13.0 toolkit for building vidx's `cuda` feature on a machine without a GPU (and without
# NVIDIA's installer): NVIDIA's own compiler wheels from PyPI, unpacked (not pip-installed) into
# one tree outside the clone, so a repeated run costs nothing.
#
#   bash scripts/setup-cuda.sh           # nvcc, nvvm, crt, cudart headers, cccl: enough for
#                                        # `cargo check --features cuda` (candle's kernels)
#   bash scripts/setup-cuda.sh --link    # also cuBLAS, cuRAND and NVRTC 13 and a link-only
#                                        # libcuda.so.1 stub: enough to link a binary
#
# Prints the environment to use, for `eval "$(bash scripts/setup-cuda.sh)"`:
#   CUDA_ROOT=<tree>/nvidia/cu13, its bin on PATH, CUDA_COMPUTE_CAP=90 (Hopper: H100/H200).
#
# Pinned to 13.0.x: cudarc 0.19 (candle 0.11) reads the toolkit's version and the GPU machines'
# driver (580) is the CUDA 13.0 driver; a newer toolkit builds PTX that driver cannot load.
# The stub only satisfies the linker: at run time the real libcuda.so.1 of the NVIDIA driver is
# loaded. It is never shipped (the Docker image and the device benchmark use the driver's).
set -euo pipefail

link=0
for arg in "$@"; do
  case "$arg" in
    --link) link=1 ;;
    *) echo "usage: setup-cuda.sh [--link]" >&2; exit 2 ;;
  esac
done

home="${VIDX_CUDA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/vidx/cuda-13.0}"
root="$home/nvidia/cu13"
mkdir -p "$home/wheels"

compiler=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)
libraries=(nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88)

# Download (once) and unpack one set of wheels; a marker file per set makes it idempotent.
fetch() {
  local name="$1"; shift
  [ -f "$home/.done-$name" ] && return 0
  echo "setup-cuda: fetching $* from PyPI" >&2
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux2010_x86_64 -d "$home/wheels" "$@" >&2
  python3 - "$home" "$@" <<'EOF'
import pathlib, re, sys, zipfile
home = pathlib.Path(sys.argv[1])
for spec in sys.argv[2:]:
    name, version = spec.split("==")
    stem = re.sub(r"[-.]", "_", name)
    wheels = sorted((home / "wheels").glob(f"{stem}-{version}-*.whl"))
    if not wheels:
        sys.exit(f"setup-cuda: no wheel for {spec} in {home / 'wheels'}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        for member in wheel.infolist():
            if member.filename.startswith("nvidia/"):
                target = home / member.filename
                wheel.extract(member, home)
                mode = (member.external_attr >> 16) & 0o777
                if mode:
                    target.chmod(mode)
EOF
  # The wheels are only needed once unpacked; the large ones (cuBLAS: 400 MB) are dropped.
  rm -f "$home"/wheels/*.whl
  touch "$home/.done-$name"
}

fetch compiler "${compiler[@]}"
# nvcc looks for its headers in include/ and for cicc under nvvm/: the wheels lay them out so.
[ -x "$root/bin/nvcc" ] || { echo "setup-cuda: $root/bin/nvcc missing after unpacking" >&2; exit 1; }

if [ "$link" = 1 ]; then
  fetch libraries "${libraries[@]}"
  # Unversioned names for the linker (-lcublas ...), as a toolkit's lib/ has them.
  for lib in cublas cublasLt curand nvrtc cudart; do
    versioned=$(cd "$root/lib" && ls "lib$lib.so."* 2>/dev/null | grep -v alt | sort | head -n1 || true)
    [ -n "$versioned" ] && ln -sf "$versioned" "$root/lib/lib$lib.so"
  done
  # libcuda: the driver's library, absent without a driver. A stub that defines every driver
  # entry point cudarc declares, with the driver's soname, for the linker only.
  if [ ! -f "$root/lib/stubs/libcuda.so" ]; then
    mkdir -p "$root/lib/stubs"
    cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort | tail -n1)
    if [ -z "$cudarc" ]; then
      echo "setup-cuda: cudarc's source is not in the cargo registry yet: run 'cargo fetch' first" >&2
      exit 1
    fi
    grep -oE 'load::<_F>\("cu[A-Za-z0-9_]+"\)' "$cudarc/src/driver/sys/mod.rs" \
      | sed -E 's/.*"(cu[A-Za-z0-9_]+)".*/void \1(void) {}/' | sort -u > "$root/lib/stubs/libcuda-stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$root/lib/stubs/libcuda-stub.c"
    rm -f "$root/lib/stubs/libcuda-stub.c"
  fi
fi

echo "export CUDA_ROOT=$root"
echo "export PATH=$root/bin:\$PATH"
echo "export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}"
