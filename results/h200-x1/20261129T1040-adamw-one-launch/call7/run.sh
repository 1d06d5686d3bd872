#!/usr/bin/env bash
set -u
cd "$(dirname "$0")/.."
dev=$PWD/.device
tar -C "$dev" -xJf "$dev/bundle.tar.xz"
export LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib
out=${OUT:-/tmp/out}; mkdir -p "$out"
{ timeout 40 "$dev/bin/test_cuda_kernels" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -4
  timeout 90 "$dev/mpich/bin/mpiexec.hydra" -n 1 "$dev/bin/test_strategies_cuda" --gtest_brief=1 --gtest_filter='*optbwd*:*sharded*' 2>&1 | grep -v "^\[ note" | tail -3
  timeout 40 "$dev/bin/lssbench" run --layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda --strategy serial --seq 16K --warmup 3 --iters 10 --no-bound --out "$out/serial.json" 2>&1 | grep -E "step median|optimizer|rror"
} 2>&1 | tee "$out/log.txt"
