#!/usr/bin/env bash
# Call 1 (2 x H200): the D = 64 flash backward with turns (the working tree: the warpgroups alternate
# blocks' dQ) against HEAD 64b02fe (.device/base_*): its attention test, bench_attention at D = 64
# alternating twice, the serial step at D = 64 (L4 C2048 H32, T = 16K) alternating twice; then the
# CUDA step test's bf16 own-flash cases on 2 ranks, weak scaling 1 -> 2 GPUs, and Nsight Compute
# (full set, SASS source counters) on the backward kernels at T = 16K causal, D = 128 and 64.
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
filter="BM_Attention/T:(4096|16384|65536)/D:64/causal:(0|1)/path:0/bwd:1|BM_Attention/T:16384/D:128/causal:1/path:0/bwd:1"
model="--layers 4 --width 2048 --heads 32 --batch 1 --dtype bf16 --backend cuda --strategy serial --seq 16K --warmup 3 --iters 10"
for rep in 1 2; do
  for v in base new; do
    echo "=== attention $v rep $rep ($(el))" | tee -a "$out/log.txt"
    exe=$dev/bin/bench_attention; [ $v = base ] && exe=$dev/base_bench_attention
    timeout 120 "$exe" --benchmark_filter="$filter" \
      --benchmark_out="$out/bench_${v}_r${rep}.json" --benchmark_out_format=json 2>&1 | grep -E 'TFLOP|ERROR|error' | cut -c1-120 | tee -a "$out/log.txt"
  done
  pack
done
for rep in 1 2; do
  for v in base new; do
    echo "=== serial D64 T16K $v rep $rep ($(el))" | tee -a "$out/log.txt"
    exe=$dev/bin/lssbench; extra=; [ $v = base ] && { exe=$dev/base_lssbench; extra=--no-bound; }
    timeout 120 mpiexec.hydra -n 1 "$exe" run $model $extra --out "$out/serial_d64_${v}_r${rep}_T16K.json" 2>&1 | grep -E "step|ms|rror" | head -12 | tee -a "$out/log.txt"
  done
  pack
done
echo "=== gpu_perf tests+weak ($(el))" | tee -a "$out/log.txt"
LSS_TIME_BUDGET_S=$((440 - ($(date +%s) - t0))) LSS_TESTS=strategies LSS_STEP_TEST_FILTER='*bf16*flash*' \
  LD_LIBRARY_PATH=$orig_ld bash scripts/gpu_perf.sh tests weak 2>&1 | tail -40 >> "$out/log.txt"
pack
for D in 128 64; do
  echo "=== ncu backward D$D ($(el))" | tee -a "$out/log.txt"
  timeout 100 ncu --clock-control none --set full --import-source yes -k regex:flash_bwd_sm90 --launch-skip 1 --launch-count 1 \
    -f -o "$out/ncu_bwd_d$D" "$dev/bin/bench_attention" --benchmark_min_time=0.001 \
    --benchmark_filter="BM_Attention/T:16384/D:$D/causal:1/path:0/bwd:1" 2>&1 | tail -3 | tee -a "$out/log.txt"
  ncu --import "$out/ncu_bwd_d$D.ncu-rep" --page details > "$out/ncu_bwd_d$D.txt" 2>&1
  ncu --import "$out/ncu_bwd_d$D.ncu-rep" --page source --csv --print-source sass > "$out/ncu_bwd_d${D}_sass.csv" 2>&1 || true
  pack
done
echo "=== end ($(el))" | tee -a "$out/log.txt"
pack; rm -rf "$out"
