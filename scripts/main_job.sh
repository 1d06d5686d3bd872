#!/usr/bin/env bash
# The main job: lss against megatron_sp (and serial) on 1, 2 and 4 ranks at one model, writing
# one result JSON per point under results/runs/main-<time>/ and a summary table. On a machine
# with GPUs (and a CUDA build) each rank drives one GPU in bf16 at a GPU-sized model; elsewhere
# the ranks run on the CPU at a small model.
set -euo pipefail
cd "$(dirname "$0")/.."
out="results/runs/main-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
gpus=0
if command -v nvidia-smi > /dev/null && grep -q "LSS_BUILT_WITH_CUDA:INTERNAL=ON" build/CMakeCache.txt 2>/dev/null; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)
fi
if [ "$gpus" -gt 0 ]; then
  model=(--backend cuda --dtype bf16 --layers 4 --width 2048 --heads 16 --seq 16K --batch 1 --iters 5 --warmup 2)
else
  model=(--layers 2 --width 64 --heads 4 --seq 256 --batch 1 --iters 3 --warmup 1 --dtype fp32 --threads 1)
fi
run() {  # run NP NAME args...
  local np=$1 name=$2
  shift 2
  echo "== $name (mpiexec -n $np)"
  mpiexec -n "$np" build/bin/lssbench run "${model[@]}" "$@" --out "$out/$name.json" | tail -n 16
}
run 1 serial --strategy serial
for p in 1 2 4; do
  if [ "$gpus" -gt 0 ] && [ "$p" -gt "$gpus" ]; then continue; fi
  run "$p" "lss_sp$p" --strategy lss --sp "$p"
  run "$p" "megatron_sp_sp$p" --strategy megatron_sp --sp "$p"
done
python3 - "$out" <<'PY'
import json, pathlib, sys
rows = []
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(f.read_text())
    rows.append((r["strategy"], r["grid"]["world"], r["timing"]["median_ms"], r["metrics"]["tokens_per_s"],
                 r["metrics"]["peak_activation_bytes"] / 2**20, r["comm"]["matches_model"], r["status"]))
print(f"\n{'strategy':<12} {'ranks':>5} {'step ms':>9} {'tokens/s':>10} {'act MiB':>8} {'comm=model':>10} status")
for s, w, ms, tps, mib, ok, st in sorted(rows):
    print(f"{s:<12} {w:>5} {ms:>9.2f} {tps:>10.0f} {mib:>8.2f} {str(ok):>10} {st}")
print(f"\nresults in {sys.argv[1]}")
PY
