#!/usr/bin/env bash
# lssbench compare: an improvement passes; a regression beyond tolerance fails naming the metric;
# a changed communication count fails; missing points and schema mismatches are reported; and the
# deterministic figures of the CPU smoke sweep equal the committed baseline.
# usage: compare.sh LSSBENCH REPO_ROOT
set -u
lssbench=$(realpath "$1")
root=$(realpath "$2")
base=$root/results/baselines/cpu-smoke
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
expect() {  # EXIT_CODE FRAGMENT DESCRIPTION -- compare args
  local want=$1 fragment=$2 what=$3
  shift 3
  out=$("$lssbench" compare "$@" 2>&1)
  rc=$?
  if [ $rc -eq "$want" ] && grep -qF -- "$fragment" <<<"$out"; then passed=$((passed + 1)); echo "ok:   $what"
  else failed=$((failed + 1)); echo "FAIL: $what (exit $rc)"; echo "$out" | tail -8 | sed 's/^/    | /'; fi
}
edit() {  # FILE PYTHON-EXPRESSION-ON-r
  python3 - "$1" "$2" <<'PY'
import json, sys
path, expr = sys.argv[1], sys.argv[2]
r = json.load(open(path))
exec(expr)
json.dump(r, open(path, "w"), indent=2)
PY
}
fresh() { rm -rf "$work/new"; cp -r "$base" "$work/new"; }
p=points/lss_w2_sp2_T256.json

fresh; edit "$work/new/$p" 'r["metrics"]["tokens_per_s"] *= 1.2'
expect 0 "0 regressions" "20% more tokens/s passes" "$base" "$work/new"
fresh; edit "$work/new/$p" 'r["metrics"]["tokens_per_s"] *= 0.9'
expect 1 "REGRESSION: lss cpu w2 sp2 T256 L2 C64 H4 B1 fp32 {\"chunk_pipeline\":false,\"distributed_optimizer\":false,\"grad_reduce_dtype\":\"fp32\",\"kv\":\"regather\",\"order\":\"contiguous\",\"overlap\":true,\"placed_gather\":false,\"placed_gather_min_bytes\":16777216,\"placed_reduce_scatter\":false,\"recompute\":false,\"split_causal\":true}: tokens/s" "10% fewer tokens/s fails, naming tokens/s" "$base" "$work/new"
expect 0 "0 regressions" "the same with --tol-throughput 0.15 passes" "$base" "$work/new" --tol-throughput 0.15
# A projection (lssbench project) beside the points is no measurement: compare passes it over.
fresh; mkdir -p "$work/new/projections"
echo '{"schema": "lssbench-projection", "schema_version": 1, "status": "ok", "strategy": "lss", "grid": {"world": 64}}' \
  >"$work/new/projections/lss-w64.json"
expect 0 "0 regressions" "a projection file in the folder is skipped" "$base" "$work/new"
fresh; edit "$work/new/$p" 'r["timing"]["comm_exposed_fraction"] += 0.05'
expect 1 ": comm_exposed_fraction" "5 points more of the step exposed fails, naming comm_exposed_fraction" "$base" "$work/new"
expect 0 "0 regressions" "the same with --tol-exposed 0.1 passes" "$base" "$work/new" --tol-exposed 0.1
# energy per step, as GPU results with an energy counter carry it (the CPU baseline has none)
fresh; mkdir -p "$work/ebase"; cp -r "$base"/. "$work/ebase"
gpu_energy() {  # JOULES: the metric and each rank's device state as a GPU run with a counter writes them
  echo "r['metrics']['energy_j_per_step'] = $1; r['timing']['device_state'] = {'per_rank': [{'energy_j': $1 * 3, 'energy_updates': 11, 'energy_window_s': 1.0}] * r['grid']['world']}"
}
edit "$work/ebase/$p" "$(gpu_energy 40.0)"
edit "$work/new/$p" "$(gpu_energy 44.0)"
expect 1 ": energy_j_per_step 40.00 -> 44.00" "10% more energy per step fails, naming energy_j_per_step" "$work/ebase" "$work/new"
expect 0 "0 regressions" "the same with --tol-energy 0.15 passes" "$work/ebase" "$work/new" --tol-energy 0.15
edit "$work/ebase/$p" 'for rank in r["timing"]["device_state"]["per_rank"]: rank["energy_window_s"] = 0.5'
expect 0 "0 regressions" "a baseline whose energy was taken over 0.5 s of counter updates (under 0.8 s) is not compared" "$work/ebase" "$work/new"
edit "$work/ebase/$p" 'for rank in r["timing"]["device_state"]["per_rank"]: rank.pop("energy_window_s")'
expect 0 "0 regressions" "a baseline whose energy was read at the region's ends alone (no energy_window_s) is not compared" "$work/ebase" "$work/new"
fresh; edit "$work/new/$p" "$(gpu_energy 44.0)"
expect 0 "0 regressions" "energy in the new results only (a baseline without a counter) is not compared" "$base" "$work/new"
fresh; edit "$work/new/$p" 'r["metrics"]["peak_mem_bytes"] = int(r["metrics"]["peak_mem_bytes"] * 1.1)'
expect 1 ": peak_mem_bytes" "10% more memory fails, naming peak_mem_bytes" "$base" "$work/new"
# A changed collective is named with both sides' calls and bytes, and only it: the all-gather's
# bytes, a new collective and one that is gone.
gather=$(python3 -c 'import json,sys; g=json.load(open(sys.argv[1]))["comm"]["per_step_rank0"]["sp"]["all_gather"]; print(g["calls"], g["bytes"])' "$base/$p")
read -r gather_calls gather_bytes <<<"$gather"
fresh; edit "$work/new/$p" 'r["comm"]["per_step_rank0"]["sp"]["all_gather"]["bytes"] += 4'
expect 1 ": comm calls/bytes 4 collectives -> 4 collectives (changed: sp.all_gather $gather_calls calls $gather_bytes bytes -> $gather_calls calls $((gather_bytes + 4)) bytes)" \
  "a changed all-gather byte count fails, naming it alone with its calls and bytes before and after" "$base" "$work/new" --no-timing
fresh; edit "$work/new/$p" 'c = r["comm"]["per_step_rank0"]["sp"]; c["broadcast"] = {"calls": 2, "bytes": 64}; del c["all_gather"]'
expect 1 "(changed: sp.all_gather $gather_calls calls $gather_bytes bytes -> none; sp.broadcast none -> 2 calls 64 bytes)" \
  "a collective gone and a new one are both named" "$base" "$work/new" --no-timing
fresh; edit "$work/new/$p" 'r["status"] = "failed"; r["status_reason"] = "non-finite loss"'
expect 1 ": status ok -> failed" "a point that passed and now fails" "$base" "$work/new"
fresh; rm "$work/new/points/megatron_sp_w4_sp4_T256.json"
expect 1 "megatron_sp cpu w4 sp4 T256 L2 C64 H4 B1 fp32 {\"distributed_optimizer\":false,\"grad_reduce_dtype\":\"fp32\",\"overlap\":true,\"recompute\":false,\"regather_ln\":true,\"scatter_chunks\":1}: missing from the new results" "a missing point is named and fails" "$base" "$work/new"
expect 0 "missing from the new results" "--allow-missing reports it without failing" "$base" "$work/new" --allow-missing
fresh; edit "$work/new/$p" 'r["schema_version"] = 2'
expect 2 "lss_w2_sp2_T256.json has schema_version 2" "a schema mismatch names the file" "$base" "$work/new"
fresh; cp "$work/new/$p" "$work/new/points/extra.json"; edit "$work/new/points/extra.json" 'r["config"]["seq"] = 512'
expect 0 "new point, not in the baseline" "an extra point is reported" "$base" "$work/new"
fresh; edit "$work/new/$p" 'r["config"]["copy_engine_gathers"] = True'
expect 1 "lss cpu w2 sp2 T256 L2 C64 H4 B1 fp32 copy-engine-gathers" "a point whose gathers ran on the copy engines is another point than the baseline's" "$base" "$work/new"
fresh; edit "$work/new/$p" 'r["config"]["copy_engine_gathers"] = False'
expect 0 "0 regressions" "copy_engine_gathers false matches a baseline written before it was recorded" "$base" "$work/new"
fresh; edit "$work/new/$p" 'r["config"]["registered_gathers"] = True'
expect 0 "0 regressions" "registered gathers (same collectives on the same SMs) match the baseline's point" "$base" "$work/new"
fresh; edit "$work/new/$p" 'r["config"]["symmetric_collectives"] = True'
expect 0 "0 regressions" "symmetric collectives (the same collectives on NCCL's other kernels) match the baseline's point" "$base" "$work/new"

# CPU CI: the deterministic figures of a fresh smoke sweep equal the committed baseline.
"$lssbench" sweep "$root/sweeps/cpu-smoke.json" --out "$work/smoke" > "$work/smoke.log" 2>&1
expect 0 "0 regressions" "cpu-smoke sweep against results/baselines/cpu-smoke (comm, memory, losses)" "$base" "$work/smoke" --no-timing --tol-memory 0

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
