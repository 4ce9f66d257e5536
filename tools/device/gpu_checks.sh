#!/usr/bin/env bash
# The GPU checks of issues 7 and 8 in one device call, stage by stage, each under its own time
# limit, everything written to $OUT (8 files at most come back):
#
#   test      cuda_test: every CUDA kernel and the device layer against the host backend
#   train     switchyard train --backend cuda: the quickstart config in full (with --metrics;
#             compare its last line with the host run's, made on a CPU machine), two steps as
#             CTest's cli_train_cuda_two_steps checks them, a global_aux_loss config (the
#             per-layer GPU accumulator), and train_cuda_matches_host (the quick start and a
#             gated shared expert, 5 steps on the device against the host)
#   sanitize  compute-sanitizer memcheck and racecheck over cuda_test
#   bench     bench_gpu --case-seconds 0.5, then bench/gpu/peer_torch.py (the PyTorch baseline,
#             under the image's own library path) and the side by side table
#
# Prepare here (no GPU needed), then one device `run`:
#   bash tools/device/bundle.sh                     # .device-bin: prebuilt binaries + libraries
#   run: carry [".device-bin"], command "bash tools/device/gpu_checks.sh test train sanitize"
#   run: carry [".device-bin"], command "bash tools/device/gpu_checks.sh bench"
# With no stage named, all four run in that order. If the carried binaries do not start there
# (another C runtime), carry [".device-debs"] instead (bash ../shared/tools/device-deps.sh) and
# the script builds from source on the machine (about 3 to 5 minutes on its 16 cores).
# SY_GPU_BUDGET (seconds, default 300) bounds the whole call: a stage gets at most what is left
# and is skipped with under 30 s. Set it in each run's command from the device tool's `status`:
# 15 device minutes hold one machine start (a minute or two), call 1 (SY_GPU_BUDGET=300,
# timeout_s 330) and, issued at once after it, call 2 (SY_GPU_BUDGET = budget_left_s - 60,
# timeout_s 30 more); then give_back.
# Files in $OUT (at most 8 come back): checks.log (every stage's tail, the bench tables, the
# summary), cuda_test.log, train.log, train_cuda.jsonl, sanitizer.log, bench_gpu.json,
# peer_torch.json, bench_gpu.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
out=${OUT:-/tmp/sy-gpu-out}
mkdir -p "$out"
budget=${SY_GPU_BUDGET:-300}
log="$out/checks.log"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(test train sanitize bench)
summary=()
last_rc=0

say() { echo "$*" | tee -a "$log"; }
left() { echo $((budget - SECONDS)); }
# stage NAME SECONDS COMMAND...: runs COMMAND with `timeout SECONDS` (or what is left).
stage() {
  local name=$1 limit=$2
  shift 2
  local have
  have=$(left)
  if [ "$have" -lt 30 ]; then
    summary+=("$name: SKIPPED (${have} s left of the budget)")
    say "== $name: skipped, ${have} s left"
    return
  fi
  [ "$limit" -gt "$have" ] && limit=$have
  say "== $name (limit ${limit} s) $(date -u +%H:%M:%S)"
  local t0=$SECONDS rc
  timeout --signal=INT --kill-after=10 "$limit" "$@"
  rc=$?
  local verdict=PASS
  [ $rc -ne 0 ] && verdict="FAIL (rc $rc)"
  { [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && verdict="TIMEOUT after ${limit} s"
  last_rc=$rc
  summary+=("$name: $verdict in $((SECONDS - t0)) s")
  say "== $name: $verdict in $((SECONDS - t0)) s"
}

{
  echo "gpu_checks $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  nvcc --version | tail -n 2
  python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'
} 2>&1 | tee -a "$log"

# NCCL from the image's PyTorch wheel; cudart and cuBLAS from the toolkit.
nccl_root=$(python3 - <<'EOF' 2>/dev/null
import glob, os
import nvidia
for pattern in ("nccl.h", "libnccl.so*"):  # include/nccl.h or lib/libnccl.so.2: their root
    for base in nvidia.__path__:
        for f in sorted(glob.glob(os.path.join(base, "**", pattern), recursive=True)):
            print(os.path.dirname(os.path.dirname(f)))
            raise SystemExit
EOF
)
say "NCCL: ${nccl_root:-not found}"
export PATH="$PATH:/usr/local/cuda/bin"
cuda_lib=/usr/local/cuda/lib64
command -v nvcc >/dev/null && cuda_lib=$(dirname "$(readlink -f "$(command -v nvcc)")")/../lib64
# PyTorch runs with the image's own library path (its wheels' CUDA libraries), our binaries
# with the carried libraries, NCCL and the toolkit's cudart / cuBLAS.
torch_ld=${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH="$repo/.device-bin/lib:${nccl_root:+$nccl_root/lib:}$cuda_lib:${LD_LIBRARY_PATH:-}"

# The binaries: carried (.device-bin), or built here from source with the carried .deb packages.
bin=$repo/.device-bin
starts() {  # 77: it started and found no GPU (a dry run on a machine without one)
  "$@" >/dev/null 2>&1
  local rc=$?
  [ $rc -eq 0 ] || [ $rc -eq 77 ]
}
if [ -x "$bin/cuda_test" ] && starts "$bin/cuda_test" --list_content &&
   starts "$bin/switchyard" --help && starts "$bin/bench_gpu" --help; then
  say "binaries: carried, built from $(cat "$bin/COMMIT" 2>/dev/null) (this tree: $(git rev-parse HEAD 2>/dev/null))"
else
  say "binaries: the carried ones are missing or do not start; building from source"
  [ -x "$bin/cuda_test" ] && ldd "$bin"/* 2>&1 | grep "not found" | tee -a "$log"
  if ! ls .device-debs/*.deb >/dev/null 2>&1; then
    say "no .device-debs to build with (carry it: bash ../shared/tools/device-deps.sh)"
    exit 1
  fi
  for f in .device-debs/*.deb; do dpkg -x "$f" /opt/sy-deps; done
  export CMAKE_PREFIX_PATH=/opt/sy-deps/usr
  export LD_LIBRARY_PATH="/opt/sy-deps/usr/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH"
  nccl_lib=$(ls "$nccl_root"/lib/libnccl.so* 2>/dev/null | head -n 1)
  nccl_flags="-DSWITCHYARD_ENABLE_NCCL=OFF"
  [ -n "$nccl_lib" ] && nccl_flags="-DSWITCHYARD_ENABLE_NCCL=ON \
    -DSWITCHYARD_NCCL_INCLUDE_DIR=$nccl_root/include -DSWITCHYARD_NCCL_LIBRARY=$nccl_lib"
  stage build 360 bash -c "set -o pipefail; cmake -S . -B build/gpu -G Ninja \
      -DCMAKE_BUILD_TYPE=Release -DSWITCHYARD_ENABLE_CUDA=ON -DSWITCHYARD_ENABLE_MPI=OFF \
      -DSWITCHYARD_ENABLE_BLAS=OFF $nccl_flags -DSWITCHYARD_BUILD_BENCH=ON \
      -DSWITCHYARD_BUILD_HOST_BENCH=OFF -DSWITCHYARD_HEADER_CHECK=OFF >/dev/null &&
    cmake --build build/gpu --target cuda_test switchyard_cli bench_gpu 2>&1 | tail -n 30"
  bin=/tmp/sy-gpu-bin
  mkdir -p "$bin"
  cp build/gpu/tests/cuda/cuda_test build/gpu/bin/switchyard build/gpu/bench/bench_gpu "$bin"/ ||
    exit 1
fi

for s in "${stages[@]}"; do
  case $s in
    test)
      stage cuda_test 150 bash -c "'$bin/cuda_test' --log_level=test_suite --report_level=short \
        > '$out/cuda_test.log' 2>&1; rc=\$?; tail -n 15 '$out/cuda_test.log'; exit \$rc"
      ;;
    train)
      stage train_cuda_quickstart 90 bash -c "'$bin/switchyard' train \
        examples/configs/quickstart.json --backend cuda --metrics '$out/train_cuda.jsonl' \
        > '$out/train.log' 2>&1; rc=\$?; tail -n 4 '$out/train.log'; exit \$rc"
      # cli_train_cuda_two_steps's check, and the host run of the same config for comparison.
      stage train_cuda_two_steps 60 bash -c "'$bin/switchyard' train \
        examples/configs/quickstart.json --steps 2 --backend cuda 2>&1 | tee -a '$out/train.log' |
        tr '\n' ' ' | grep -Eq 'MoE blocks on the GPU.*step +2 +loss [0-9]'"
      stage train_cuda_global_aux 60 bash -c "'$bin/switchyard' train \
        tests/cli/data/train_combined_losses.json --steps 5 --backend cuda >> '$out/train.log' 2>&1;
        rc=\$?; tail -n 3 '$out/train.log'; exit \$rc"
      # CTest's train_cuda_matches_host: the quick start and a gated shared expert, 5 steps on
      # the device against the host.
      stage train_cuda_matches_host 90 bash -c "python3 tests/train/check_cuda_matches_host.py \
        '$bin/switchyard' /tmp/cuda_matches_host examples/configs/quickstart.json \
        tests/cli/data/train_shared_expert.json 2>&1 | tee -a '$out/train.log' | tail -n 4;
        exit \${PIPESTATUS[0]}"
      ;;
    sanitize)
      if ! command -v compute-sanitizer >/dev/null; then
        summary+=("sanitize: SKIPPED (no compute-sanitizer on the PATH)")
        continue
      fi
      if printf '%s\n' "${summary[@]}" | grep -q '^cuda_test: TIMEOUT'; then
        summary+=("sanitize: SKIPPED (cuda_test timed out: the sanitizers run it more slowly)")
        continue
      fi
      stage memcheck 150 bash -c "compute-sanitizer --tool memcheck --error-exitcode 9 \
        '$bin/cuda_test' --log_level=test_suite > '$out/sanitizer.log' 2>&1;
        rc=\$?; grep -E 'ERROR SUMMARY|rror|not supported' '$out/sanitizer.log' | tail -n 8;
        exit \$rc"
      # A runtime without the debugger interface (gVisor) refuses the device: say so, not FAIL.
      if [ "$last_rc" -ne 0 ] && grep -q "Device not supported" "$out/sanitizer.log"; then
        summary[${#summary[@]}-1]="memcheck: UNSUPPORTED on this machine's runtime (Device not supported)"
        continue
      fi
      stage racecheck 150 bash -c "compute-sanitizer --tool racecheck --error-exitcode 9 \
        '$bin/cuda_test' --log_level=test_suite >> '$out/sanitizer.log' 2>&1; rc=\$?;
        grep -E 'RACECHECK SUMMARY|ERROR SUMMARY|hazard' '$out/sanitizer.log' | tail -n 8;
        exit \$rc"
      ;;
    bench)
      stage bench_gpu 170 bash -c "set -o pipefail; '$bin/bench_gpu' --case-seconds 0.5 \
        --out '$out/bench_gpu.json' 2>&1 | tee -ia '$log'"
      stage peer_torch 170 env LD_LIBRARY_PATH="$torch_ld" PYTHONUNBUFFERED=1 bash -c \
        "set -o pipefail; python3 bench/gpu/peer_torch.py --case-seconds 0.5 --out '$out/peer_torch.json' \
         --compare '$out/bench_gpu.json' --md '$out/bench_gpu.md' 2>&1 | tee -ia '$log'"
      ;;
    *)
      summary+=("$s: unknown stage (test, train, sanitize, bench)")
      ;;
  esac
done

say ""
say "summary ($SECONDS s):"
for line in "${summary[@]}"; do say "  $line"; done
printf '%s\n' "${summary[@]}" | grep -qv ': PASS' && exit 1
exit 0
