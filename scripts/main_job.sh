#!/usr/bin/env bash
# The main job: a sweep of lss against megatron_sp (and serial), then its charts and summary.
# On a machine with GPUs and a CUDA build: sweeps/gpu-strong.json on as many GPUs as there are
# (one rank per GPU, bf16, the GPU.md model); elsewhere sweeps/cpu-smoke.json on 1, 2 and 4 CPU
# ranks. Output: results/runs/main-<time>/ (points, logs, aggregate, charts/, SUMMARY.md), and the
# projections from its widest points (projections/, charts-projection/).
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
# Projections (README, Projection): each distributed strategy's widest point of the sweep (most
# ranks, then the longest T) is the calibration; lssbench project prices its configuration at
# its own grid (the check against the measurement), and at 2 and 4 times its ranks with T grown
# alike (weak scaling), on one device or CPU process. A point whose step is not above its bound's
# exposed communication cannot calibrate (CPU ranks on fewer cores than ranks time their
# collectives so): the next widest is taken.
cals=()
for strategy in lss megatron_sp; do
  cal=$(python3 - "$out/points" "$strategy" <<'PY'
import glob, json, os, sys
best = None
for f in glob.glob(os.path.join(sys.argv[1], "*.json")):
    r = json.load(open(f))
    if r.get("status") != "ok" or r.get("strategy") != sys.argv[2] or not r.get("bound") or r["grid"]["world"] < 2:
        continue
    exposed = r["bound"]["rank0"]["comm_exposed_ms"]
    if min(r["timing"]["median_ms"], r["bound"]["bound_ms"]) <= exposed:
        continue
    key = (r["grid"]["world"], r["config"]["seq"])
    if best is None or key > best[0]:
        best = (key, f)
print(best[1] if best else "")
PY
)
  [ -n "$cal" ] || { echo "projections: no $strategy point of the sweep can calibrate one"; continue; }
  read -r world seq < <(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["grid"]["world"], r["config"]["seq"])' "$cal")
  for k in 1 2 4; do
    # A grid the strategy refuses (megatron_sp: P must divide H) is reported and passed over (exit 2).
    rc=0
    build/bin/lssbench project --like "$cal" --calibration "$cal" --sp $((world * k)) --seq $((seq * k)) \
      --out "$out/projections/$strategy-w$((world * k))-T$((seq * k)).json" || rc=$?
    [ $rc -eq 0 ] || [ $rc -eq 2 ] || exit $rc
    [ $rc -eq 0 ] || echo "projections: $strategy on $((world * k)) ranks refused (above); passed over"
  done
  cals+=("$cal")
done
if [ ${#cals[@]} -gt 0 ]; then
  python3 plots/projplot.py "$out/projections" "${cals[@]}" --out "$out/charts-projection"
  echo "projections: $out/projections, chart and table: $out/charts-projection (SUMMARY.md)"
fi
