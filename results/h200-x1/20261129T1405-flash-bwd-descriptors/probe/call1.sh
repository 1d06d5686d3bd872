#!/usr/bin/env bash
# Call 1 (1 x H200): the flash backward's wgmma descriptors. base = HEAD 64b02fe (the bundle's
# bench_attention and lssbench); u1 = the consumer warpgroup index made warp-uniform (__shfl_sync),
# so the descriptors live in uniform registers (the D = 128 loop 759 -> 705 SASS instructions, no R2UR);
# u2 = u1 plus descriptors as the tile's descriptor plus offset / 16 (759 -> 650 at D = 128 with 10
# spill instructions in the loop; D = 64 735 -> 602, no spill). test_cuda_attention of u1 and u2,
# bench_attention fwd+bwd at D = 64 and 128 in the order base u1 u2, twice; the serial step at
# T = 16K (H16, then H32) in the same order, twice.
set -u
dev=$PWD/.device
[ -x "$dev/bin/bench_attention" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
for v in u1 u2; do [ -x "$dev/$v/bench_attention" ] || { mkdir -p "$dev/$v" && tar -C "$dev/$v" -xJf "$dev/$v.tar.xz"; }; done
export PATH=$dev/mpich/bin:$PATH LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
root=${OUT:-/tmp/out}; out=$root/ab; mkdir -p "$out"
t0=$(date +%s)
el() { echo "$(( $(date +%s) - t0 )) s"; }
pack() { (cd "$root" && tar czf ab.tar.gz.tmp ab && mv ab.tar.gz.tmp ab.tar.gz); }
exe() { if [ "$1" = base ]; then echo "$dev/bin/$2"; else echo "$dev/$1/$2"; fi; }
nvidia-smi --query-gpu=name,clocks.sm,power.draw,power.limit,driver_version --format=csv | tee "$out/log.txt"
for v in u1 u2; do
  echo "=== test_cuda_attention $v ($(el))" | tee -a "$out/log.txt"
  timeout 150 "$(exe $v test_cuda_attention)" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -6 | tee -a "$out/log.txt"
done
filter="BM_Attention/T:(4096|16384|65536)/D:(64|128)/causal:(0|1)/path:0/bwd:1"
for rep in 1 2; do
  for v in base u1 u2; do
    echo "=== attention $v rep $rep ($(el))" | tee -a "$out/log.txt"
    timeout 120 "$(exe $v bench_attention)" --benchmark_filter="$filter" \
      --benchmark_out="$out/bench_${v}_r${rep}.json" --benchmark_out_format=json 2>&1 | grep -E 'TFLOP|ERROR|error' | cut -c1-120 | tee -a "$out/log.txt"
  done
  pack
done
for H in 16 32; do
  model="--layers 4 --width 2048 --heads $H --batch 1 --dtype bf16 --backend cuda --strategy serial --seq 16K --warmup 3 --iters 10 --no-bound"
  for rep in 1 2; do
    for v in base u1 u2; do
      echo "=== serial H$H T16K $v rep $rep ($(el))" | tee -a "$out/log.txt"
      timeout 100 mpiexec.hydra -n 1 "$(exe $v lssbench)" run $model --out "$out/serial_h${H}_${v}_r${rep}_T16K.json" 2>&1 | grep -E "step .*/13|rror" | tail -2 | tee -a "$out/log.txt"
    done
    pack
  done
done
echo "=== end ($(el))" | tee -a "$out/log.txt"
pack; rm -rf "$out"
