#!/usr/bin/env bash
# The main job: lss against megatron_sp (and serial) on 1, 2 and 4 ranks at one model, writing
# one result JSON per point under results/runs/main-<time>/ and a summary table.
# GPUs: the CUDA backend is not built yet, so this runs on CPU MPI ranks everywhere for now.
set -euo pipefail
cd "$(dirname "$0")/.."
out="results/runs/main-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
model=(--layers 2 --width 64 --heads 4 --seq 256 --batch 1 --iters 3 --warmup 1 --dtype fp32 --threads 1)
run() {  # run NP NAME args...
  local np=$1 name=$2
  shift 2
  echo "== $name (mpiexec -n $np)"
  mpiexec -n "$np" build/bin/lssbench run "${model[@]}" "$@" --out "$out/$name.json" | tail -n 16
}
run 1 serial --strategy serial
for p in 1 2 4; do
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
