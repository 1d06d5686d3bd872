#!/usr/bin/env bash
# Serial step at T = 16K beside the PyTorch eager peer, alternating (not committed; results folder has a copy).
set -u
cd "$(dirname "$0")/.."
dev=$PWD/.device
[ -x "$dev/bin/lssbench" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
out=${OUT:-/tmp/out}; mkdir -p "$out"
t0=$(date +%s)
for rep in 1 2; do
  echo "=== serial rep $rep ($(( $(date +%s) - t0 )) s)" | tee -a "$out/log.txt"
  LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib timeout 100 "$dev/bin/lssbench" run --layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda \
    --strategy serial --seq 16K --warmup 3 --iters 10 --out "$out/serial_r$rep.json" 2>&1 | grep -E "step median|device during|analytic|attention path|rror" | tee -a "$out/log.txt"
  echo "=== eager rep $rep ($(( $(date +%s) - t0 )) s)" | tee -a "$out/log.txt"
  env LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib timeout 120 python3 bench/peers/torch_step.py --out "$out/eager_r$rep.json" --strategy serial --mode eager --seq 16K 2>&1 | tail -4 | tee -a "$out/log.txt"
done
echo "=== end ($(( $(date +%s) - t0 )) s)" | tee -a "$out/log.txt"
