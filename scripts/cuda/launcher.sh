#!/usr/bin/env bash
# Launcher for sightline's CUDA build (packed beside `sightline-cuda` by scripts/cuda/build.sh).
# The CUDA binary links the NVIDIA driver (libcuda.so.1) and the CUDA libraries dynamically, so
# where one is missing the dynamic loader stops it before sightline can say anything; this
# checks first and says in one line what is missing and where it is looked for.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=$here/sightline-cuda
missing=$(ldd "$bin" 2>/dev/null | awk '/not found/ {print $1}' | paste -sd, - || true)
if [ -n "$missing" ]; then
    case "$missing" in
    *libcuda.so*) what="the NVIDIA driver (libcuda.so.1): this machine has no GPU driver; use the CPU build, or add the driver's folder to LD_LIBRARY_PATH" ;;
    *libnccl.so*) what="NCCL (libnccl.so.2, which this build links for multi-GPU training): add its folder to LD_LIBRARY_PATH (a PyTorch CUDA environment has it under site-packages/nvidia/nccl/lib), or build with SIGHTLINE_CUDA_FEATURES=cuda scripts/cuda/build.sh" ;;
    *) what="the CUDA 13 libraries ($missing): add their folders to LD_LIBRARY_PATH (a PyTorch cu130 environment has them under site-packages/nvidia/*/lib)" ;;
    esac
    echo "sightline (CUDA build): cannot start without $what" >&2
    exit 1
fi
exec "$bin" "$@"
