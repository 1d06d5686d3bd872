#!/usr/bin/env bash
# Call 2: the committed turns schedule (no switch): GPU tests, SASS against the probe, the
# attention benchmark at D = 128 and 64, then the serial step beside PyTorch eager, alternating.
set -u
dev=$PWD/.device
[ -x "$dev/bin/bench_attention" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
export LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
out=${OUT:-/tmp/out}; mkdir -p "$out"
t0=$(date +%s)
el() { echo "$(( $(date +%s) - t0 )) s"; }
nvidia-smi --query-gpu=name,clocks.sm,power.draw,power.limit --format=csv | tee "$out/log.txt"
bash "$dev/sass_cmp.sh" 2>&1 | tee -a "$out/log.txt"
echo "=== test_cuda_attention ($(el))" | tee -a "$out/log.txt"
timeout 150 "$dev/bin/test_cuda_attention" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -4 | tee -a "$out/log.txt"
echo "=== test_strategies_cuda ($(el))" | tee -a "$out/log.txt"
timeout 240 "$dev/mpich/bin/mpiexec.hydra" -n 1 "$dev/bin/test_strategies_cuda" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -3 | tee -a "$out/log.txt"
echo "=== attention ($(el))" | tee -a "$out/log.txt"
timeout 200 "$dev/bin/bench_attention" --benchmark_filter="BM_Attention/T:(4096|16384|65536)/D:(64|128)/causal:(0|1)/path:(0|1)/bwd:1" \
  --benchmark_out="$out/bench_attention.json" --benchmark_out_format=json 2>&1 | grep -E 'TFLOP|ERROR|error' | cut -c1-150 | tee -a "$out/log.txt"
for rep in 1 2; do
  echo "=== serial 16K rep $rep ($(el))" | tee -a "$out/log.txt"
  timeout 120 "$dev/bin/lssbench" run --layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda \
    --strategy serial --seq 16K --warmup 3 --iters 10 --out "$out/serial_r${rep}.json" 2>&1 | grep -E "step median|device during|attention path|rror" | tee -a "$out/log.txt"
  echo "=== eager rep $rep ($(el))" | tee -a "$out/log.txt"
  env LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib timeout 120 python3 bench/peers/torch_step.py --out "$out/eager_r$rep.json" --strategy serial --mode eager --seq 16K 2>&1 | tail -3 | tee -a "$out/log.txt"
done
echo "=== end ($(el))" | tee -a "$out/log.txt"
