#!/usr/bin/env bash
# Device call (not committed; the results folder keeps a copy): the GPU tests that cover AdamW,
# then the serial 16K step, base (HEAD's lssbench) against new (the bundle: one AdamW launch over
# tensors laid end to end), alternating, without the bound.
set -u
cd "$(dirname "$0")/.."
dev=$PWD/.device
[ -x "$dev/bin/lssbench" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
[ -x "$dev/base_lssbench" ] || { xz -dc "$dev/base_lssbench.xz" > "$dev/base_lssbench" && chmod +x "$dev/base_lssbench"; }
export LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
out=${OUT:-/tmp/out}; mkdir -p "$out"
t0=$(date +%s)
log() { tee -a "$out/log.txt"; }
echo "=== test_cuda_kernels" | log
timeout 60 "$dev/bin/test_cuda_kernels" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -4 | log
echo "=== test_strategies_cuda optbwd, sharded ($(( $(date +%s) - t0 )) s)" | log
timeout 90 "$dev/mpich/bin/mpiexec.hydra" -n 1 "$dev/bin/test_strategies_cuda" --gtest_brief=1 --gtest_filter="${STRAT_FILTER:-*optbwd*:*sharded*}" 2>&1 | grep -v "^\[ note" | tail -4 | log
model="--layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda --strategy serial --seq 16K --warmup 3 --iters 10 --no-bound"
for rep in 1 2; do
  for v in base new; do
    bin=$dev/bin/lssbench; [ $v = base ] && bin=$dev/base_lssbench
    echo "=== $v rep $rep ($(( $(date +%s) - t0 )) s)" | log
    timeout 60 "$bin" run $model --out "$out/${v}_r$rep.json" 2>&1 | grep -E "step median|optimizer|rror" | log
  done
done
