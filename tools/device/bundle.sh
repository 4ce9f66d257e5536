#!/usr/bin/env bash
# Builds, on this machine (no GPU needed), what the GPU checks run, and packs it into .device-bin/
# (ignored by git) for the device tool to carry: cuda_test, the switchyard driver and bench_gpu,
# stripped, with the shared libraries they need that a bare CUDA image lacks (Boost, fmt, ...).
# Building here saves the lent machine's minutes; tools/device/gpu_checks.sh falls back to a
# build there when these binaries do not start.
#
#   bash tools/device/bundle.sh         # about 10 min on 2 cores; .device-bin/ about 45 MB
#
# The build (build/device) leaves out MPI and BLAS (the carried libraries would pass the 64 MiB
# the device tool carries); the driver's dense blocks then use the plain loops, the MoE blocks
# are on the GPU either way.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
grep -qx '/.device-bin/' .git/info/exclude 2>/dev/null || echo '/.device-bin/' >> .git/info/exclude
cmake -S . -B build/device -G Ninja -DCMAKE_BUILD_TYPE=Release -DSWITCHYARD_WARNINGS_AS_ERRORS=ON \
  -DSWITCHYARD_ENABLE_CUDA=ON -DSWITCHYARD_ENABLE_NCCL=ON -DSWITCHYARD_ENABLE_MPI=OFF \
  -DSWITCHYARD_ENABLE_BLAS=OFF -DSWITCHYARD_BUILD_BENCH=ON -DSWITCHYARD_BUILD_HOST_BENCH=OFF \
  -DSWITCHYARD_HEADER_CHECK=OFF >/dev/null
cmake --build build/device --target cuda_test switchyard_cli bench_gpu
rm -rf .device-bin && mkdir -p .device-bin/lib
strip -o .device-bin/cuda_test build/device/tests/cuda/cuda_test
strip -o .device-bin/switchyard build/device/bin/switchyard
strip -o .device-bin/bench_gpu build/device/bench/bench_gpu
# Libraries outside the C runtime and CUDA (the image has those; NCCL comes from its PyTorch).
for b in .device-bin/cuda_test .device-bin/switchyard .device-bin/bench_gpu; do
  ldd "$b" | awk '/=> \//{print $3}'
done | sort -u | grep -Ev '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|ld-linux[^/]*|libcudart|libcublas|libcublasLt|libnccl)\.so' |
  while read -r lib; do cp -L "$lib" .device-bin/lib/; done
git rev-parse HEAD > .device-bin/COMMIT
du -sh .device-bin
ls -la .device-bin .device-bin/lib
echo "carry [\".device-bin\"] in the device run (tools/device/gpu_checks.sh); built from $(cat "$root/.device-bin/COMMIT")"
