#!/usr/bin/env bash
# Call 1 (1 x H200): base = HEAD a774e10 (the bundle); n1 = probe/n1_desc_from_tile_d128.diff
# (the forward's warpgroup index warp-uniform; the D = 128 backward's descriptors from the tile's
# plus offset / 16 with K/V's tile address made uniform once per block: loop 705 -> 634 SASS
# instructions, no spill; forward D = 128 2920 -> 2744). First the GPU tests at the committed
# kernels (kernels, attention, the step on one rank), n1's test_cuda_attention and step test; then
# bench_attention forward+backward and forward alone, base and n1 alternating twice; then the serial
# step at T = 16K (H16), base n1 twice.
set -u
dev=$PWD/.device
[ -x "$dev/bin/bench_attention" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
[ -x "$dev/n1/bench_attention" ] || { mkdir -p "$dev/n1" && tar -C "$dev/n1" -xJf "$dev/n1.tar.xz"; }
export PATH=$dev/mpich/bin:$PATH LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
root=${OUT:-/tmp/out}; out=$root/ab; mkdir -p "$out"
t0=$(date +%s)
el() { echo "$(( $(date +%s) - t0 )) s"; }
pack() { (cd "$root" && tar czf ab.tar.gz.tmp ab && mv ab.tar.gz.tmp ab.tar.gz); }
exe() { if [ "$1" = base ]; then echo "$dev/bin/$2"; else echo "$dev/$1/$2"; fi; }
nvidia-smi --query-gpu=name,clocks.sm,power.draw,power.limit,driver_version --format=csv | tee "$out/log.txt"
for t in test_cuda_kernels test_cuda_attention; do
  echo "=== $t base ($(el))" | tee -a "$out/log.txt"
  timeout 150 "$dev/bin/$t" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -6 | tee -a "$out/log.txt"
done
echo "=== test_strategies_cuda base -n 1 ($(el))" | tee -a "$out/log.txt"
timeout 150 mpiexec.hydra -n 1 "$dev/bin/test_strategies_cuda" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -6 | tee -a "$out/log.txt"
echo "=== test_cuda_attention n1 ($(el))" | tee -a "$out/log.txt"
timeout 150 "$dev/n1/test_cuda_attention" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -6 | tee -a "$out/log.txt"
pack
for bwd in 1 0; do
  filter="BM_Attention/T:(4096|16384|65536)/D:(64|128)/causal:(0|1)/path:0/bwd:$bwd"
  for rep in 1 2; do
    for v in base n1; do
      echo "=== attention bwd:$bwd $v rep $rep ($(el))" | tee -a "$out/log.txt"
      timeout 100 "$(exe $v bench_attention)" --benchmark_filter="$filter" \
        --benchmark_out="$out/bench_bwd${bwd}_${v}_r${rep}.json" --benchmark_out_format=json 2>&1 | grep -E 'TFLOP|ERROR|error' | cut -c1-120 | tee -a "$out/log.txt"
    done
    pack
  done
done
model="--layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda --strategy serial --seq 16K --warmup 3 --iters 10 --no-bound"
for rep in 1 2; do
  for v in base n1; do
    echo "=== serial H16 T16K $v rep $rep ($(el))" | tee -a "$out/log.txt"
    timeout 100 mpiexec.hydra -n 1 "$(exe $v lssbench)" run $model --out "$out/serial_h16_${v}_r${rep}_T16K.json" 2>&1 | grep -E "step .*/13|rror" | tail -2 | tee -a "$out/log.txt"
  done
  pack
done
echo "=== test_strategies_cuda n1 -n 1 ($(el))" | tee -a "$out/log.txt"
timeout 100 mpiexec.hydra -n 1 "$dev/n1/test_strategies_cuda" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -6 | tee -a "$out/log.txt"
echo "=== end ($(el))" | tee -a "$out/log.txt"
pack; rm -rf "$out"
