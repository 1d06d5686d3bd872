#!/usr/bin/env bash
# The main job: a sweep of lss against megatron_sp (and serial), then its charts and summary.
# On a machine with GPUs and a CUDA build: sweeps/gpu-strong.json on as many GPUs as there are
# (one rank per GPU, bf16, the GPU.md model); elsewhere sweeps/cpu-smoke.json on 1, 2 and 4 CPU
# ranks. Output: results/runs/main-<time>/ (points, logs, aggregate, charts/, SUMMARY.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out="results/runs/main-$(date -u +%Y%m%dT%H%M%SZ)"
gpus=0
if command -v nvidia-smi > /dev/null && grep -q "LSS_BUILT_WITH_CUDA:INTERNAL=ON" build/CMakeCache.txt 2>/dev/null; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)
fi
if [ "$gpus" -gt 0 ]; then
  build/bin/lssbench sweep sweeps/gpu-strong.json --out "$out" --max-world "$gpus"
else
  build/bin/lssbench sweep sweeps/cpu-smoke.json --out "$out"
fi
python3 plots/lssplot.py "$out" --out "$out/charts"
echo "charts and summary: $out/charts (SUMMARY.md)"
