#!/usr/bin/env bash
# Probe (not committed): backward variants of the wgmma flash kernel (LSS_FLASH_BWD_VARIANT).
set -u
cd "$(dirname "$0")/.."
dev=$PWD/.device
[ -x "$dev/bin/bench_attention" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
export LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
out=${OUT:-/tmp/out}; mkdir -p "$out"
nvidia-smi --query-gpu=name,clocks.sm,power.draw,power.limit --format=csv | tee "$out/log.txt"
for v in ${TEST_VARIANTS:-}; do
  echo "=== variant $v tests" | tee -a "$out/log.txt"
  LSS_FLASH_BWD_VARIANT=$v timeout 200 "$dev/bin/test_cuda_attention" --gtest_brief=1 2>&1 | tail -4 | tee -a "$out/log.txt"
done
for rep in 1 2; do
for vf in $(for v in $VARIANTS; do echo "$v:$FILTER"; done; for v in ${VARIANTS2:-}; do echo "$v:$FILTER2"; done); do
  v=${vf%%:*}; FILT=${vf#*:}
  echo "=== variant $v bench rep $rep" | tee -a "$out/log.txt"
  LSS_FLASH_BWD_VARIANT=$v timeout 200 "$dev/bin/bench_attention" --benchmark_filter="$FILT" \
    --benchmark_out="$out/bench_v${v}_r${rep}_$(echo "$FILT" | cksum | cut -c1-6).json" --benchmark_out_format=json 2>&1 | grep -E 'TFLOP|ERROR|error' | cut -c1-150 | tee -a "$out/log.txt"
done; done
cd "$out" && tar czf bench.tar.gz bench_v*.json && rm -f bench_v*.json
