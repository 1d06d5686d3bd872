#!/usr/bin/env bash
# Probe (not committed): backward variant 1 (overwriting first products, next stage's wait hoisted)
# against 0 (HEAD's SASS); LayerNorm kernels new (bundle) against HEAD's (base_bench_kernels);
# GPU tests of the bundle.
set -u
cd "$(dirname "$0")/.."
dev=$PWD/.device
[ -x "$dev/bin/bench_attention" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
[ -x "$dev/base_bench_kernels" ] || { xz -dc "$dev/base_bench_kernels.xz" > "$dev/base_bench_kernels" && chmod +x "$dev/base_bench_kernels"; }
export LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
out=${OUT:-/tmp/out}; mkdir -p "$out"
t0=$(date +%s)
el() { echo "$(( $(date +%s) - t0 )) s"; }
nvidia-smi --query-gpu=name,clocks.sm,power.draw,power.limit --format=csv | tee "$out/log.txt"
if [ -n "${RUN_TESTS:-}" ]; then
  echo "=== test_cuda_kernels ($(el))" | tee -a "$out/log.txt"
  timeout 120 "$dev/bin/test_cuda_kernels" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -8 | tee -a "$out/log.txt"
  for v in ${VARIANTS:-0 1}; do
    echo "=== test_cuda_attention variant $v ($(el))" | tee -a "$out/log.txt"
    LSS_FLASH_BWD_VARIANT=$v timeout 150 "$dev/bin/test_cuda_attention" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -6 | tee -a "$out/log.txt"
  done
fi
if [ -n "${RUN_STRAT:-}" ]; then
  echo "=== test_strategies_cuda variant ${RUN_STRAT} ($(el))" | tee -a "$out/log.txt"
  LSS_FLASH_BWD_VARIANT=$RUN_STRAT timeout 240 "$dev/mpich/bin/mpiexec.hydra" -n 1 "$dev/bin/test_strategies_cuda" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -8 | tee -a "$out/log.txt"
fi
for rep in 1 2; do
  for v in ${VARIANTS:-0 1}; do
    echo "=== attention variant $v rep $rep ($(el))" | tee -a "$out/log.txt"
    LSS_FLASH_BWD_VARIANT=$v timeout 200 "$dev/bin/bench_attention" --benchmark_filter="${FILTER:-BM_Attention/T:(4096|16384|65536)/D:(64|128)/causal:1/path:0/bwd:1}" \
      --benchmark_out="$out/bench_v${v}_r${rep}.json" --benchmark_out_format=json 2>&1 | grep -E 'TFLOP|ERROR|error' | cut -c1-150 | tee -a "$out/log.txt"
  done
  if [ -x "$dev/base_bench_kernels" ]; then
    for which in base new; do
      bin=$dev/bin/bench_kernels; [ $which = base ] && bin=$dev/base_bench_kernels
      echo "=== layernorm $which rep $rep ($(el))" | tee -a "$out/log.txt"
      timeout 100 "$bin" --backend=cuda --dtype=bf16 --large --benchmark_filter='layernorm' --benchmark_repetitions=3 \
        --benchmark_out="$out/ln_${which}_r${rep}.json" --benchmark_out_format=json 2>&1 | grep -E 'layernorm|ERROR|rror' | cut -c1-150 | tee -a "$out/log.txt"
    done
  fi
done
for rep in 1 2; do
  for v in ${STEP_VARIANTS:-}; do
    echo "=== serial 16K variant $v rep $rep ($(el))" | tee -a "$out/log.txt"
    LSS_FLASH_BWD_VARIANT=$v timeout 120 "$dev/bin/lssbench" run --layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda \
      --strategy serial --seq 16K --warmup 3 --iters 10 --out "$out/serial_v${v}_r${rep}.json" 2>&1 | grep -E "step|attention path|rror" | tee -a "$out/log.txt"
  done
done
echo "=== end ($(el))" | tee -a "$out/log.txt"
cd "$out" && tar czf bench.tar.gz bench_v*.json ln_*.json 2>/dev/null && rm -f bench_v*.json ln_*.json
