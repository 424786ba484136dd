#!/usr/bin/env bash
# Build and install Horovod 0.28.1 (PyTorch + Gloo, no MPI) into the Python environment given as
# the only argument, following ../shared/HOROVOD.md:
#   sdist -> two CMake C++-standard edits (checked) -> build with --no-build-isolation -> check.
# Idempotent: exits 0 at once when `import horovod.torch` already works.
#
# Usage: bash scripts/install_horovod.sh .venv/bin/python
set -euo pipefail

HVD_VERSION="0.28.1"

die() { echo "install_horovod: error: $*" >&2; exit 1; }
say() { echo "install_horovod: $*"; }

[[ $# -eq 1 ]] || die "usage: bash scripts/install_horovod.sh PYTHON (e.g. .venv/bin/python)"
PYTHON_ARG="$1"
[[ -x "$PYTHON_ARG" ]] || die "PYTHON '$PYTHON_ARG' is not an executable file"
# Absolute path: the build runs in another directory and the check runs from /.
PYTHON="$(cd "$(dirname "$PYTHON_ARG")" && pwd)/$(basename "$PYTHON_ARG")"
BIN_DIR="$(dirname "$PYTHON")"

# Horovod's run-time dependencies (installed with --no-deps below, so check them here).
RUNTIME_DEPS=(cloudpickle psutil pyyaml packaging)
ensure_runtime_deps() {
    local missing=() pkg mod
    for pkg in "${RUNTIME_DEPS[@]}"; do
        mod="$pkg"; [[ "$pkg" == "pyyaml" ]] && mod="yaml"
        "$PYTHON" -c "import $mod" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        say "installing Horovod run-time dependencies: ${missing[*]}"
        "$PYTHON" -m pip install -q "${missing[@]}" || die "pip install ${missing[*]} failed"
    fi
}

if (cd / && "$PYTHON" -c "import horovod.torch") >/dev/null 2>&1; then
    ensure_runtime_deps
    say "horovod.torch already importable with $PYTHON; nothing to do"
    exit 0
fi

"$PYTHON" -c "import torch" >/dev/null 2>&1 \
    || die "torch is not importable with $PYTHON; install torch first (make setup)"
command -v cmake >/dev/null 2>&1 || die "cmake not found on PATH (needed to build Horovod)"
command -v g++ >/dev/null 2>&1 || die "g++ not found on PATH (needed to build Horovod)"

ensure_runtime_deps

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="$ROOT/build/horovod"
SRC_DIR="$BUILD_DIR/horovod-$HVD_VERSION"
SDIST="$BUILD_DIR/horovod-$HVD_VERSION.tar.gz"
mkdir -p "$BUILD_DIR"

if [[ ! -f "$SDIST" ]]; then
    say "downloading the horovod==$HVD_VERSION source package into $BUILD_DIR"
    "$PYTHON" -m pip download -q --no-deps --no-binary :all: "horovod==$HVD_VERSION" -d "$BUILD_DIR" \
        || die "pip download horovod==$HVD_VERSION failed"
fi
[[ -f "$SDIST" ]] || die "expected $SDIST after pip download; not found"

# Always start from a fresh unpack so the edits below apply to pristine files.
rm -rf "$SRC_DIR"
tar -xzf "$SDIST" -C "$BUILD_DIR" || die "could not unpack $SDIST"

# Edit 1: top-level C++ standard 14 -> 17 (Gloo: "multiple definition of kDefaultTimeout").
TOP_CMAKE="$SRC_DIR/CMakeLists.txt"
# Edit 2: PyTorch extension C++ standard 14 -> 20 (torch >= 2.10 headers require C++20).
TORCH_CMAKE="$SRC_DIR/horovod/torch/CMakeLists.txt"
sed -i 's/^set(CMAKE_CXX_STANDARD 14)$/set(CMAKE_CXX_STANDARD 17)/' "$TOP_CMAKE"
sed -i 's/^\([[:space:]]*\)set(CMAKE_CXX_STANDARD 14)$/\1set(CMAKE_CXX_STANDARD 20)/' "$TORCH_CMAKE"
grep -q '^set(CMAKE_CXX_STANDARD 17)$' "$TOP_CMAKE" \
    || die "edit 1 did not land: no 'set(CMAKE_CXX_STANDARD 17)' in $TOP_CMAKE"
grep -q 'CMAKE_CXX_STANDARD 14' "$TOP_CMAKE" \
    && die "edit 1 incomplete: 'CMAKE_CXX_STANDARD 14' still in $TOP_CMAKE"
grep -q '^[[:space:]]*set(CMAKE_CXX_STANDARD 20)$' "$TORCH_CMAKE" \
    || die "edit 2 did not land: no 'set(CMAKE_CXX_STANDARD 20)' in $TORCH_CMAKE"
grep -q 'CMAKE_CXX_STANDARD 14' "$TORCH_CMAKE" \
    && die "edit 2 incomplete: 'CMAKE_CXX_STANDARD 14' still in $TORCH_CMAKE"
say "C++ standard edits applied (top level: 17, horovod/torch: 20)"

export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1
export HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=gloo
export MAKEFLAGS="${MAKEFLAGS:--j2}"
TORCH_CUDA="$("$PYTHON" -c 'import torch; print(torch.version.cuda or "")')"
CUDA_DIR="${CUDA_HOME:-/usr/local/cuda}"
if [[ -n "$TORCH_CUDA" && -d "$CUDA_DIR" ]]; then
    # A CUDA build of torch makes Horovod enable CUDA; it must then find the toolkit's cudart.
    export HOROVOD_CUDA_HOME="$CUDA_DIR" CUDA_HOME="$CUDA_DIR"
    export HOROVOD_BUILD_CUDA_CC_LIST="${HOROVOD_BUILD_CUDA_CC_LIST:-75}"
    say "torch is a CUDA $TORCH_CUDA build; building with CUDA_HOME=$CUDA_DIR" \
        "(set HOROVOD_GPU_OPERATIONS=NCCL yourself on a GPU cluster)"
elif [[ -n "$TORCH_CUDA" ]]; then
    say "warning: torch is a CUDA $TORCH_CUDA build but $CUDA_DIR does not exist;" \
        "the build may fail to find cudart (set CUDA_HOME)"
fi

say "building horovod==$HVD_VERSION (3-6 minutes on 2 cores; MAKEFLAGS=$MAKEFLAGS)"
start=$(date +%s)
(cd "$SRC_DIR" && "$PYTHON" -m pip install --no-build-isolation --no-deps --no-cache-dir -v . \
    > "$BUILD_DIR/build.log" 2>&1) || {
    tail -n 40 "$BUILD_DIR/build.log" >&2
    die "building Horovod failed; full log: $BUILD_DIR/build.log"
}
say "built and installed in $(( $(date +%s) - start )) s (log: $BUILD_DIR/build.log)"

# Check from outside the source tree, so the installed package is what gets imported.
HVDRUN="$BIN_DIR/horovodrun"
[[ -x "$HVDRUN" ]] || die "horovodrun not found at $HVDRUN after install"
CHECK="$(cd / && PATH="$BIN_DIR:$PATH" "$HVDRUN" --check-build 2>&1)" \
    || { echo "$CHECK" >&2; die "horovodrun --check-build failed"; }
echo "$CHECK"
grep -q '\[X\] PyTorch' <<<"$CHECK" || die "horovodrun --check-build does not list PyTorch"
grep -q '\[X\] Gloo' <<<"$CHECK" || die "horovodrun --check-build does not list Gloo"
(cd / && "$PYTHON" -c "import horovod.torch") || die "import horovod.torch fails after install"
rm -rf "$SRC_DIR"  # about 280 MB of build tree; the sdist and build.log stay in $BUILD_DIR
say "horovod $HVD_VERSION OK (PyTorch and Gloo enabled)"
