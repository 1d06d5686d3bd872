#!/usr/bin/env bash
# Probe (the env switch is not committed): the flash backward at D = 128 with the consumer
# warpgroups taking turns and dQ deferred one block (LSS_FLASH_BWD_TURNS=1) against HEAD's
# schedule (0), in one binary: GPU tests under both, bench_attention, the serial step, eager.
set -u
# Run from the repository root.
dev=$PWD/.device
[ -x "$dev/bin/bench_attention" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
export LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
out=${OUT:-/tmp/out}; mkdir -p "$out"
t0=$(date +%s)
el() { echo "$(( $(date +%s) - t0 )) s"; }
nvidia-smi --query-gpu=name,clocks.sm,power.draw,power.limit --format=csv | tee "$out/log.txt"
if [ -n "${RUN_TESTS:-}" ]; then
  for v in ${TEST_VARIANTS:-1 0}; do
    echo "=== test_cuda_attention turns=$v ($(el))" | tee -a "$out/log.txt"
    LSS_FLASH_BWD_TURNS=$v timeout 150 "$dev/bin/test_cuda_attention" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -6 | tee -a "$out/log.txt"
  done
fi
if [ -n "${RUN_STRAT:-}" ]; then
  echo "=== test_strategies_cuda turns=${RUN_STRAT} ($(el))" | tee -a "$out/log.txt"
  LSS_FLASH_BWD_TURNS=$RUN_STRAT timeout 240 "$dev/mpich/bin/mpiexec.hydra" -n 1 "$dev/bin/test_strategies_cuda" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -8 | tee -a "$out/log.txt"
fi
for rep in 1 2; do
  for v in ${VARIANTS:-0 1}; do
    echo "=== attention turns=$v rep $rep ($(el))" | tee -a "$out/log.txt"
    LSS_FLASH_BWD_TURNS=$v timeout 200 "$dev/bin/bench_attention" --benchmark_filter="${FILTER:-BM_Attention/T:(4096|16384|65536)/D:128/causal:(0|1)/path:0/bwd:1}" \
      --benchmark_out="$out/bench_t${v}_r${rep}.json" --benchmark_out_format=json 2>&1 | grep -E 'TFLOP|ERROR|error' | cut -c1-150 | tee -a "$out/log.txt"
  done
done
for rep in 1 2; do
  for v in ${STEP_VARIANTS:-}; do
    echo "=== serial 16K turns=$v rep $rep ($(el))" | tee -a "$out/log.txt"
    LSS_FLASH_BWD_TURNS=$v timeout 120 "$dev/bin/lssbench" run --layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda \
      --strategy serial --seq 16K --warmup 3 --iters 10 --out "$out/serial_t${v}_r${rep}.json" 2>&1 | grep -E "step median|device during|attention path|rror" | tee -a "$out/log.txt"
  done
  if [ -n "${EAGER:-}" ]; then
    echo "=== eager rep $rep ($(el))" | tee -a "$out/log.txt"
    env LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib timeout 120 python3 bench/peers/torch_step.py --out "$out/eager_r$rep.json" --strategy serial --mode eager --seq 16K 2>&1 | tail -4 | tee -a "$out/log.txt"
  fi
done
echo "=== end ($(el))" | tee -a "$out/log.txt"
cd "$out" && files=$(ls bench_t*.json serial_*.json eager_*.json 2>/dev/null) && tar czf bench.tar.gz $files && rm -f $files
