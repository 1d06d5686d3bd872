#!/usr/bin/env bash
# Call 5: the serial step at D = 64 (L4 C2048 H32) on the own kernels (--attention flash) against
# cuDNN (--attention cudnn), alternating; and the GPU test of --attention auto's rule with D = 64
# added (this build).
set -u
dev=$PWD/.device
[ -x "$dev/bin/bench_attention" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
export LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
out=${OUT:-/tmp/out}/d64; mkdir -p "$out"
t0=$(date +%s)
el() { echo "$(( $(date +%s) - t0 )) s"; }
nvidia-smi --query-gpu=name,clocks.sm,power.draw,power.limit --format=csv | tee "$out/log.txt"
echo "=== test_cuda_attention ($(el))" | tee -a "$out/log.txt"
timeout 100 "$dev/bin/test_cuda_attention" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -4 | tee -a "$out/log.txt"
run() {  # name seq attention [extra]
  echo "=== $1 ($(el))" | tee -a "$out/log.txt"
  timeout 90 "$dev/bin/lssbench" run --layers 4 --width 2048 --heads 32 --batch 1 --dtype bf16 --backend cuda \
    --strategy serial --seq "$2" --attention "$3" --warmup 2 --iters 8 ${4:-} --out "$out/$1.json" 2>&1 | grep -E "step median|attention path|rror" | tee -a "$out/log.txt"
}
for rep in 1 2; do
  run "d64_T16K_cudnn_r$rep" 16K cudnn
  run "d64_T16K_flash_r$rep" 16K flash
done
run d64_T64K_cudnn 64K cudnn
run d64_T64K_flash 64K flash
run d64_T16K_recompute_cudnn 16K cudnn --recompute
run d64_T16K_recompute_flash 16K flash --recompute
echo "=== end ($(el))" | tee -a "$out/log.txt"
cd "$(dirname "$out")" && tar czf d64.tar.gz d64 && rm -rf d64
