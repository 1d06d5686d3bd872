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
# alike (weak scaling), on one device or CPU process. A point lssbench project refuses as a
# calibration (its step not above its bound's exposed communication and contention, as CPU ranks
# on fewer cores than ranks time their collectives) gives way to the next widest.
project() {  # CALIBRATION K: the projection at K times its ranks; exit 2 where refused
  local world seq
  read -r world seq < <(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["grid"]["world"], r["config"]["seq"])' "$1")
  build/bin/lssbench project --like "$1" --calibration "$1" --sp $((world * $2)) --seq $((seq * $2)) \
    --out "$out/projections/$strategy-w$((world * $2))-T$((seq * $2)).json"
}
cals=()
for strategy in lss megatron_sp; do
  cal=""
  while read -r candidate; do
    rc=0
    project "$candidate" 1 || rc=$?
    [ $rc -eq 0 ] || [ $rc -eq 2 ] || exit $rc
    if [ $rc -eq 0 ]; then cal=$candidate; break; fi
    echo "projections: $candidate cannot calibrate (above); the next widest point"
  done < <(python3 - "$out/points" "$strategy" <<'PY'
import glob, json, os, sys
points = []
for f in glob.glob(os.path.join(sys.argv[1], "*.json")):
    r = json.load(open(f))
    if r.get("status") == "ok" and r.get("strategy") == sys.argv[2] and r.get("bound") and r["grid"]["world"] > 1:
        points.append(((r["grid"]["world"], r["config"]["seq"]), f))
for _, f in sorted(points, reverse=True):
    print(f)
PY
)
  [ -n "$cal" ] || { echo "projections: no $strategy point of the sweep can calibrate one"; continue; }
  for k in 2 4; do
    # A grid the strategy refuses (megatron_sp: P must divide H) is reported and passed over (exit 2).
    rc=0
    project "$cal" "$k" || rc=$?
    [ $rc -eq 0 ] || [ $rc -eq 2 ] || exit $rc
    [ $rc -eq 0 ] || echo "projections: $strategy at $k times its ranks refused (above); passed over"
  done
  cals+=("$cal")
done
if [ ${#cals[@]} -gt 0 ]; then
  python3 plots/projplot.py "$out/projections" "${cals[@]}" --out "$out/charts-projection"
  echo "projections: $out/projections, chart and table: $out/charts-projection (SUMMARY.md)"
fi
