#!/usr/bin/env bash
# Probe (not committed): D = 64 forward with three consumer warpgroups (LSS_FLASH_FWD_VARIANT).
set -u
cd "$(dirname "$0")/.."
dev=$PWD/.device
[ -x "$dev/bin/bench_attention" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
export LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
out=${OUT:-/tmp/out}; mkdir -p "$out"
t0=$(date +%s)
for v in 1 3; do
  echo "=== variant $v tests ($(( $(date +%s) - t0 )) s)" | tee -a "$out/log.txt"
  LSS_FLASH_FWD_VARIANT=$v timeout 100 "$dev/bin/test_cuda_attention" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -8 | tee -a "$out/log.txt"
done
F='BM_Attention/T:(4096|16384|65536)/D:64/causal:1/path:0/bwd:[01]|BM_Attention/T:16384/D:64/causal:0/path:0/bwd:[01]'
for v in 0 1 3; do
  echo "=== variant $v bench ($(( $(date +%s) - t0 )) s)" | tee -a "$out/log.txt"
  LSS_FLASH_FWD_VARIANT=$v timeout 80 "$dev/bin/bench_attention" --benchmark_filter="$F" --benchmark_min_time=0.3 \
    --benchmark_out="$out/bench_fwd_v$v.json" --benchmark_out_format=json 2>&1 | grep -E 'TFLOP|ERROR|error' | cut -c1-150 | tee -a "$out/log.txt"
done
echo "=== end ($(( $(date +%s) - t0 )) s)" | tee -a "$out/log.txt"
