#!/usr/bin/env bash
# Builds sightline's CUDA binary on a machine without a GPU or a system CUDA, and packs it to
# travel to the machine that has one.
#
#   scripts/cuda/build.sh [OUT_DIR]        (default: target/cuda-dist)
#
# What it does, and why (details and the pitfalls it avoids: ../shared/spec/cuda-build.md in
# the development workspace; README "CUDA build"):
# 1. The CUDA 13.0 toolchain from PyPI wheels (nvcc, headers, cudart, cuBLAS, cuRAND, NVRTC),
#    pinned to 13.0.x: PTX from a newer nvcc may not load on a CUDA 13.0 driver (580). The
#    wheels are unzipped into a prefix under target/ (no root, no system CUDA).
# 2. candle's `cuda` feature links the driver (`-lcuda`), which no wheel ships: a link-time
#    stub `libcuda.so` is generated from cudarc's own list of driver functions. At run time the
#    real driver's libcuda.so.1 is loaded instead. NCCL (`-lnccl`, for data-parallel training
#    on GPUs) gets a stub the same way, from cudarc's NCCL functions; at run time the
#    libnccl.so.2 of the GPU machine's PyTorch environment (nvidia/nccl/lib) is loaded.
# 3. The binary is built for a portable CPU level (x86-64-v3), not `target-cpu=native`: it runs
#    on the GPU machine's host CPU, which is not this one. Its own target dir keeps it apart
#    from the CPU build.
# 4. It is stripped and packed with a launcher (`sightline`) that checks the shared libraries
#    first, so that a machine without the NVIDIA driver gets one line saying so instead of the
#    dynamic loader's message; the real binary is `sightline-cuda` beside it.
#
# Environment: CUDA_COMPUTE_CAP (default 90: H100/H200; 80 for A100, 89 for L4/4090),
# SIGHTLINE_CUDA_FEATURES (default `cuda,nccl`; `cuda` for a binary that does not need
# libnccl.so.2 at run time and has no multi-GPU training), SIGHTLINE_CUDA_PREFIX (default
# target/cuda-toolchain), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
OUT=${1:-$REPO/target/cuda-dist}
PREFIX=${SIGHTLINE_CUDA_PREFIX:-$REPO/target/cuda-toolchain}
PYTHON=${PYTHON:-python3}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
FEATURES=${SIGHTLINE_CUDA_FEATURES:-cuda,nccl}
start=$(date +%s)

# 1. The toolchain. Exact pins: the newest 13.0.x of each on PyPI when this was written.
WHEELS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-nvrtc==13.0.88
    nvidia-curand==10.4.0.35
    nvidia-cublas==13.0.2.14
)
if [ ! -x "$PREFIX/root/nvidia/cu13/bin/nvcc" ]; then
    echo "== CUDA 13.0 toolchain from PyPI into $PREFIX (about 1 GB unpacked)"
    mkdir -p "$PREFIX/wheels" "$PREFIX/root"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        -d "$PREFIX/wheels" "${WHEELS[@]}"
    for w in "$PREFIX"/wheels/*.whl; do
        "$PYTHON" -m zipfile -e "$w" "$PREFIX/root"
    done
    chmod -R u+x "$PREFIX/root/nvidia/cu13/bin" "$PREFIX/root/nvidia/cu13/nvvm/bin"
fi
CUDA=$PREFIX/root/nvidia/cu13
[ -x "$CUDA/bin/nvcc" ] || { echo "error: no nvcc under $CUDA/bin after unpacking the wheels" >&2; exit 1; }
# The wheels ship only versioned libraries; the linker's -lcublas etc. need the plain names.
for lib in cublas cublasLt cudart curand nvrtc; do
    v=$(ls "$CUDA/lib/lib$lib.so."* 2>/dev/null | sort | head -1 || true)
    [ -n "$v" ] || { echo "error: lib$lib.so.* missing under $CUDA/lib" >&2; exit 1; }
    ln -sf "$(basename "$v")" "$CUDA/lib/lib$lib.so"
done

# 2. The driver stub, from the cudarc version Cargo.lock pins.
cargo fetch --locked --quiet
CUDARC_VERSION=$(awk '/^name = "cudarc"$/ {getline; gsub(/[version =" ]/, ""); print; exit}' Cargo.lock)
CUDARC_SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$CUDARC_VERSION" | head -1)
[ -f "$CUDARC_SRC/src/driver/sys/mod.rs" ] || { echo "error: cudarc $CUDARC_VERSION source not found" >&2; exit 1; }
STUB=$PREFIX/driver-stub
mkdir -p "$STUB"
grep -oE "\bfn cu[A-Za-z0-9_]+" "$CUDARC_SRC/src/driver/sys/mod.rs" | sort -u |
    awk '{print "void " $2 "(void) {}"}' > "$STUB/stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB/libcuda.so" "$STUB/stub.c"
NCCL_SYS="$CUDARC_SRC/src/nccl/sys/mod.rs"
[ -f "$NCCL_SYS" ] || { echo "error: $NCCL_SYS not found" >&2; exit 1; }
grep -oE "\bfn nccl[A-Za-z0-9_]+" "$NCCL_SYS" | sort -u |
    awk '{print "void " $2 "(void) {}"}' > "$STUB/nccl-stub.c"
gcc -shared -fPIC -Wl,-soname,libnccl.so.2 -o "$STUB/libnccl.so" "$STUB/nccl-stub.c"

# 3. The build.
echo "== cargo build --release --features $FEATURES (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
PATH=$CUDA/bin:$PATH CUDA_ROOT=$CUDA CUDA_PATH=$CUDA NVCC_CCBIN=${NVCC_CCBIN:-gcc} \
    LIBRARY_PATH=$CUDA/lib:$STUB \
    RUSTFLAGS="-C target-cpu=x86-64-v3 -L $STUB -L $CUDA/lib" \
    CARGO_TARGET_DIR=$REPO/target/cuda \
    cargo build --release --locked --features "$FEATURES" -p sightline

# 4. Pack: stripped binary, launcher, xz archive.
mkdir -p "$OUT"
strip -o "$OUT/sightline-cuda.tmp" "$REPO/target/cuda/release/sightline"
mv "$OUT/sightline-cuda.tmp" "$OUT/sightline-cuda"
cp "$REPO/scripts/cuda/launcher.sh" "$OUT/sightline"
chmod +x "$OUT/sightline" "$OUT/sightline-cuda"
tar -C "$OUT" -cJf "$OUT/sightline-cuda.tar.xz.tmp" sightline sightline-cuda
mv "$OUT/sightline-cuda.tar.xz.tmp" "$OUT/sightline-cuda.tar.xz"
size=$(stat -c %s "$OUT/sightline-cuda")
packed=$(stat -c %s "$OUT/sightline-cuda.tar.xz")
echo "== done in $(( $(date +%s) - start )) s"
echo "   $OUT/sightline-cuda: $((size / 1048576)) MiB stripped; $OUT/sightline-cuda.tar.xz: $((packed / 1048576)) MiB"
echo "   at run time it needs libcuda.so.1 (the NVIDIA driver) and the CUDA 13 libcudart, libcublas,"
echo "   libcublasLt, libcurand, libnvrtc (and libnccl.so.2 with NCCL) on LD_LIBRARY_PATH (a PyTorch cu130 environment has them:"
echo "   its site-packages/nvidia/*/lib folders); run it through the launcher: $OUT/sightline"
