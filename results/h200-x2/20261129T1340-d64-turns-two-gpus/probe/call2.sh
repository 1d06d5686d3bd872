#!/usr/bin/env bash
# Call 2 (2 x H200): the flash backward with each thread's lse and Delta loaded before the waits on
# the products (the working tree) against HEAD 64b02fe (.device/base_*): test_cuda_attention,
# bench_attention at D = 64 and 128 alternating twice, the serial step at D = 128 (L4 C2048 H16) and
# D = 64 (H32) at T = 16K alternating twice; then the CUDA step test's bf16 own-flash cases on 2 ranks
# and lss / megatron_sp at 16K per GPU on 2 GPUs with --attention cudnn (base) against the default (new).
set -u
dev=$PWD/.device
[ -x "$dev/bin/bench_attention" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
for b in bench_attention lssbench; do
  [ -x "$dev/base_$b" ] || { xz -dc "$dev/base_$b.xz" > "$dev/base_$b" && chmod +x "$dev/base_$b"; }
done
orig_ld=${LD_LIBRARY_PATH-}
export PATH=$dev/mpich/bin:$PATH LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export NCCL_NVLS_ENABLE=0
root=${OUT:-/tmp/out}; out=$root/ab; mkdir -p "$out"
t0=$(date +%s)
el() { echo "$(( $(date +%s) - t0 )) s"; }
pack() { (cd "$root" && tar czf ab.tar.gz.tmp ab && mv ab.tar.gz.tmp ab.tar.gz); }
nvidia-smi --query-gpu=name,clocks.sm,power.draw,power.limit,driver_version --format=csv | tee "$out/log.txt"
echo "=== test_cuda_attention ($(el))" | tee -a "$out/log.txt"
timeout 150 "$dev/bin/test_cuda_attention" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -6 | tee -a "$out/log.txt"
filter="BM_Attention/T:(4096|16384|65536)/D:(64|128)/causal:(0|1)/path:0/bwd:1"
for rep in 1 2; do
  for v in base new; do
    echo "=== attention $v rep $rep ($(el))" | tee -a "$out/log.txt"
    exe=$dev/bin/bench_attention; [ $v = base ] && exe=$dev/base_bench_attention
    timeout 120 "$exe" --benchmark_filter="$filter" \
      --benchmark_out="$out/bench_${v}_r${rep}.json" --benchmark_out_format=json 2>&1 | grep -E 'TFLOP|ERROR|error' | cut -c1-120 | tee -a "$out/log.txt"
  done
  pack
done
for H in 16 32; do
  model="--layers 4 --width 2048 --heads $H --batch 1 --dtype bf16 --backend cuda --strategy serial --seq 16K --warmup 3 --iters 10"
  for rep in 1 2; do
    for v in base new; do
      echo "=== serial H$H T16K $v rep $rep ($(el))" | tee -a "$out/log.txt"
      exe=$dev/bin/lssbench; extra=; [ $v = base ] && { exe=$dev/base_lssbench; extra=--no-bound; }
      timeout 120 mpiexec.hydra -n 1 "$exe" run $model $extra --out "$out/serial_h${H}_${v}_r${rep}_T16K.json" 2>&1 | grep -E "step .*/13|rror" | tail -3 | tee -a "$out/log.txt"
    done
    pack
  done
done
echo "=== gpu_perf tests+ab ($(el))" | tee -a "$out/log.txt"
LSS_TIME_BUDGET_S=$((560 - ($(date +%s) - t0))) LSS_TESTS=strategies LSS_STEP_TEST_FILTER='*bf16*flash*' \
  LSS_AB_BASE=$dev/bin/lssbench LSS_AB_BASE_ARGS="--attention cudnn" LSS_AB_SEQ_PER_GPU=16 LSS_AB_TAG=cudnn \
  LD_LIBRARY_PATH=$orig_ld bash scripts/gpu_perf.sh tests ab 2>&1 | tail -40 >> "$out/log.txt"
echo "=== end ($(el))" | tee -a "$out/log.txt"
pack; rm -rf "$out"
