#!/usr/bin/env bash
# Call 3: the attention benchmark of HEAD before the turns (67c7977's bench_attention, "base")
# against the committed turns schedule ("new") and the lean probe (LSS_FLASH_BWD_LEAN=1: no zero
# fill before the first products), alternating twice at D = 64 and 128; the lean probe's GPU test.
# Then scripts/gpu_perf.sh peers-serial profile runs after this script in the same call.
set -u
dev=$PWD/.device
[ -x "$dev/bin/bench_attention" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
[ -x "$dev/base_bench_attention" ] || { xz -dc "$dev/base_bench_attention.xz" > "$dev/base_bench_attention" && chmod +x "$dev/base_bench_attention"; }
export LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
out=${OUT:-/tmp/out}/ab; mkdir -p "$out"
t0=$(date +%s)
el() { echo "$(( $(date +%s) - t0 )) s"; }
nvidia-smi --query-gpu=name,clocks.sm,power.draw,power.limit --format=csv | tee "$out/log.txt"
bash "$dev/sass_cmp.sh" 2>&1 | tee -a "$out/log.txt"
echo "=== test_cuda_attention lean ($(el))" | tee -a "$out/log.txt"
LSS_FLASH_BWD_LEAN=1 timeout 150 "$dev/bin/test_cuda_attention" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -4 | tee -a "$out/log.txt"
filter="BM_Attention/T:(4096|16384|65536)/D:(64|128)/causal:(0|1)/path:0/bwd:1"
for rep in 1 2; do
  for v in base new lean; do
    echo "=== attention $v rep $rep ($(el))" | tee -a "$out/log.txt"
    exe=$dev/bin/bench_attention; [ $v = base ] && exe=$dev/base_bench_attention
    lean=0; [ $v = lean ] && lean=1
    LSS_FLASH_BWD_LEAN=$lean timeout 200 "$exe" --benchmark_filter="$filter" \
      --benchmark_out="$out/bench_${v}_r${rep}.json" --benchmark_out_format=json 2>&1 | grep -E 'TFLOP|ERROR|error' | cut -c1-120 | tee -a "$out/log.txt"
  done
done
echo "=== end ($(el))" | tee -a "$out/log.txt"
cd "$(dirname "$out")" && tar czf ab.tar.gz ab && rm -rf ab
