#!/usr/bin/env bash
# Call 4 (probe, the switch not committed): three Q/dO stages under the turns schedule
# (LSS_FLASH_BWD_STAGES=3) against the committed two, in one binary: the GPU test under three,
# then bench_attention and the serial step alternating twice.
set -u
dev=$PWD/.device
[ -x "$dev/bin/bench_attention" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
export LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
out=${OUT:-/tmp/out}/st; mkdir -p "$out"
t0=$(date +%s)
el() { echo "$(( $(date +%s) - t0 )) s"; }
nvidia-smi --query-gpu=name,clocks.sm,power.draw,power.limit --format=csv | tee "$out/log.txt"
echo "=== test_cuda_attention stages=3 ($(el))" | tee -a "$out/log.txt"
LSS_FLASH_BWD_STAGES=3 timeout 150 "$dev/bin/test_cuda_attention" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -4 | tee -a "$out/log.txt"
for rep in 1 2; do
  for v in 2 3; do
    echo "=== attention stages=$v rep $rep ($(el))" | tee -a "$out/log.txt"
    LSS_FLASH_BWD_STAGES=$v timeout 200 "$dev/bin/bench_attention" --benchmark_filter="BM_Attention/T:(4096|16384|65536)/D:128/causal:(0|1)/path:0/bwd:1" \
      --benchmark_out="$out/bench_s${v}_r${rep}.json" --benchmark_out_format=json 2>&1 | grep -E 'TFLOP|ERROR|error' | cut -c1-120 | tee -a "$out/log.txt"
  done
done
for rep in 1 2; do
  for v in 2 3; do
    echo "=== serial 16K stages=$v rep $rep ($(el))" | tee -a "$out/log.txt"
    LSS_FLASH_BWD_STAGES=$v timeout 120 "$dev/bin/lssbench" run --layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda \
      --strategy serial --seq 16K --warmup 3 --iters 10 --out "$out/serial_s${v}_r${rep}.json" 2>&1 | grep -E "step median|device during|rror" | tee -a "$out/log.txt"
  done
done
echo "=== end ($(el))" | tee -a "$out/log.txt"
cd "$(dirname "$out")" && tar czf st.tar.gz st && rm -rf st
