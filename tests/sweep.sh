#!/usr/bin/env bash
# The sweep runner: spec validation, failing points (crash, hang, out-of-memory) recorded while
# the sweep goes on, a sweep killed half-way and rerun ends with every point exactly once, the
# max-sequence search, the Slurm script, the committed presets.   usage: sweep.sh LSSBENCH
set -u
lssbench=$(realpath "$1")
fake=$(realpath "$(dirname "$0")/fake_lssbench.sh")
presets=$(realpath "$(dirname "$0")/../sweeps")
export LSS_REAL_BINARY=$lssbench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok:   $*"; }
bad() { failed=$((failed + 1)); echo "FAIL: $*"; }
model='"model": {"layers": 1, "width": 32, "heads": 2, "batch": 1, "threads": 1}'

# ---- spec validation: a clear error naming the field, non-zero exit
check_spec() {  # FRAGMENT JSON
  printf '%s\n' "$2" > bad.json
  out=$("$lssbench" sweep bad.json --out "$work/never" 2>&1)
  rc=$?
  if [ $rc -ne 0 ] && grep -qF -- "$1" <<<"$out" && [ ! -e "$work/never" ]; then ok "spec error: $1"
  else bad "spec error '$1': rc $rc, output: $out"; fi
}
check_spec "not valid JSON" '{"name": "x",'
check_spec "missing field 'mode'" '{"name": "x", "strategies": ["lss"], "world": [1], "seq": [64], '"$model"'}'
check_spec "mode: '\"fast\"' is not weak, strong or max_seq" '{"name": "x", "mode": "fast", "strategies": ["lss"], "world": [1], "seq": [64], '"$model"'}'
check_spec "strategies: unknown strategy \"ring\"" '{"name": "x", "mode": "strong", "strategies": ["ring"], "world": [1], "seq": [64], '"$model"'}'
check_spec "world: -2 must be positive" '{"name": "x", "mode": "strong", "strategies": ["lss"], "world": [-2], "seq": [64], '"$model"'}'
check_spec "model: unknown option 'colour'" '{"name": "x", "mode": "strong", "strategies": ["lss"], "world": [1], "seq": [64], "model": {"colour": 3}}'
check_spec "unknown field 'itres'" '{"name": "x", "mode": "strong", "strategies": ["lss"], "world": [1], "seq": [64], "itres": 3, '"$model"'}'
check_spec "max_seq.granularity: -32 must be positive" '{"name": "x", "mode": "max_seq", "strategies": ["lss"], "world": [1], "seq": [64], "max_seq": {"granularity": -32, "limit": 1024}, '"$model"'}'
check_spec "max_seq: {granularity, limit} is required" '{"name": "x", "mode": "max_seq", "strategies": ["lss"], "world": [1], "seq": [64], '"$model"'}'
check_spec "model.keep-kv: an option of lss, none of which this sweep runs" '{"name": "x", "mode": "strong", "strategies": ["megatron_sp"], "world": [1], "seq": [64], "model": {"layers": 1, "keep-kv": true}}'
check_spec "strategy_model.megatron_sp.zigzag: an option of lss, which megatron_sp does not read" '{"name": "x", "mode": "strong", "strategies": ["lss", "megatron_sp"], "world": [1], "seq": [64], '"$model"', "strategy_model": {"megatron_sp": {"zigzag": true}}}'
check_spec "strategy_model.serial: not a strategy of this sweep (lss)" '{"name": "x", "mode": "strong", "strategies": ["lss"], "world": [1], "seq": [64], '"$model"', "strategy_model": {"serial": {"layers": 2}}}'
check_spec "strategy_model.lss: unknown option 'colour'" '{"name": "x", "mode": "strong", "strategies": ["lss"], "world": [1], "seq": [64], '"$model"', "strategy_model": {"lss": {"colour": 3}}}'
check_spec "min_time_s: \"1s\" is not a number of seconds from 0 to 3600" '{"name": "x", "mode": "strong", "strategies": ["lss"], "world": [1], "seq": [64], "min_time_s": "1s", '"$model"'}'
out=$("$lssbench" sweep missing.json --out x 2>&1); rc=$?
if [ $rc -ne 0 ] && grep -q "missing.json: cannot be opened" <<<"$out"; then ok "unreadable spec"; else bad "unreadable spec: $out"; fi

# ---- min_time_s: each point's timed steps go on past `iters` until they have lasted that long
cat > mintime.json <<EOF2
{"name": "mintime", "mode": "strong", "strategies": ["lss"], "world": [2], "seq": [64],
 $model, "iters": 2, "min_time_s": 0.3, "warmup": 0, "timeout_s": 60}
EOF2
"$lssbench" sweep mintime.json --out mintime > mintime.log 2>&1
if python3 - mintime/points/lss_w2_sp2_T64.json <<'PYEOF2'
import json, sys
r = json.load(open(sys.argv[1]))
c, t = r["config"], r["timing"]
sys.exit(0 if r["status"] == "ok" and c["min_time_s"] == 0.3 and c["min_iters"] == 2 and c["iters"] > 2
         and len(t["iterations_ms"]) == c["iters"] else 1)
PYEOF2
then ok "min_time_s 0.3: more timed steps than iters, each recorded"
else bad "min_time_s: $(cat mintime.log | tail -5)"; fi

# ---- trace_steps: each point's traced steps into traces/<point>.json, named by its result; a
# trace left without its result (an interrupted run) is kept under another name, not overwritten
check_spec "trace_steps: -1 is not a count from 0 to 100" '{"name": "x", "mode": "strong", "strategies": ["lss"], "world": [1], "seq": [64], "trace_steps": -1, '"$model"'}'
cat > traced.json <<EOF2
{"name": "traced", "mode": "strong", "strategies": ["lss", "megatron_sp"], "world": [2], "seq": [64],
 $model, "iters": 1, "warmup": 0, "timeout_s": 60, "trace_steps": 2}
EOF2
mkdir -p traced/traces
echo '{"stale": true}' > traced/traces/megatron_sp_w2_sp2_T64.json
"$lssbench" sweep traced.json --out traced > traced.log 2>&1
if python3 - traced <<'PYEOF2'
import glob, json, os, sys
d = sys.argv[1]
for point in ("lss_w2_sp2_T64", "megatron_sp_w2_sp2_T64"):
    r = json.load(open(f"{d}/points/{point}.json"))
    t = json.load(open(f"{d}/traces/{point}.json"))
    if r["status"] != "ok" or r["trace"]["steps"] != 2 or os.path.abspath(r["trace"]["path"]) != os.path.abspath(f"{d}/traces/{point}.json"):
        sys.exit(f"{point}: result {r['status']}, trace {r.get('trace')}")
    if not t["traceEvents"] or t["otherData"]["traced_steps"] != 2:
        sys.exit(f"{point}: trace file without its events")
kept = glob.glob(f"{d}/traces/megatron_sp_w2_sp2_T64.interrupted-*.json")
if len(kept) != 1 or json.load(open(kept[0])) != {"stale": True}:
    sys.exit(f"the stale trace was not kept: {kept}")
PYEOF2
then ok "trace_steps 2: every point traced into traces/, a stale trace kept, not overwritten"
else bad "trace_steps: $(tail -5 traced.log)"; fi

# ---- a sweep in parts: --min-world / --max-world keep the points of those world sizes
cat > parts.json <<EOF2
{"name": "parts", "mode": "strong", "strategies": ["lss"], "world": [1, 2, 4], "seq": [64],
 $model, "iters": 1, "warmup": 0, "timeout_s": 60}
EOF2
"$lssbench" sweep parts.json --out parts --min-world 2 --max-world 2 > parts.log 2>&1
if [ "$(ls parts/points)" = "lss_w2_sp2_T64.json" ]; then ok "--min-world 2 --max-world 2 ran only the 2-rank point"
else bad "sweep in parts: $(ls parts/points 2>&1)"; fi
out=$("$lssbench" sweep parts.json --out parts2 --min-world 8 2>&1); rc=$?
if [ $rc -ne 0 ] && grep -qF -- "--min-world 8: leaves no point of the spec" <<<"$out"; then ok "--min-world beyond the spec is refused"
else bad "--min-world 8: rc $rc, $out"; fi

# ---- an option of one strategy goes to that strategy's points only (megatron_sp refuses --zigzag)
cat > mixed.json <<EOF2
{"name": "mixed", "mode": "strong", "strategies": ["lss", "megatron_sp"], "world": [2], "seq": [64],
 "model": {"layers": 1, "width": 32, "heads": 2, "batch": 1, "threads": 1, "zigzag": true, "regather-ln": false},
 "iters": 1, "warmup": 0, "timeout_s": 60}
EOF2
"$lssbench" sweep mixed.json --out mixed > mixed.log 2>&1
if python3 - mixed/points <<'PYEOF2'
import json, sys
lss = json.load(open(sys.argv[1] + "/lss_w2_sp2_T64.json"))
meg = json.load(open(sys.argv[1] + "/megatron_sp_w2_sp2_T64.json"))
sys.exit(not (lss["status"] == meg["status"] == "ok" and lss["config"]["strategy_options"]["order"] == "zigzag"
              and meg["config"]["strategy_options"]["regather_ln"] is False and "zigzag" not in meg["config"]["strategy_options"]))
PYEOF2
then ok "model.zigzag reaches lss's points only, model.regather-ln megatron_sp's; both points ran"
else bad "mixed-strategy options: $(tail -5 mixed.log)"; fi

# ---- strategy_model: each strategy's own options over model's (recompute on for lss, off for megatron_sp)
cat > best.json <<EOF2
{"name": "best", "mode": "strong", "strategies": ["lss", "megatron_sp"], "world": [2], "seq": [64],
 "model": {"layers": 1, "width": 32, "heads": 2, "batch": 1, "threads": 1, "recompute": true},
 "strategy_model": {"lss": {"zigzag": true}, "megatron_sp": {"recompute": false, "regather-ln": false}},
 "iters": 1, "warmup": 0, "timeout_s": 60}
EOF2
"$lssbench" sweep best.json --out best > best.log 2>&1
if python3 - best/points <<'PYEOF2'
import json, sys
lss = json.load(open(sys.argv[1] + "/lss_w2_sp2_T64.json"))
meg = json.load(open(sys.argv[1] + "/megatron_sp_w2_sp2_T64.json"))
lo, mo = lss["config"]["strategy_options"], meg["config"]["strategy_options"]
sys.exit(not (lss["status"] == meg["status"] == "ok" and lo["order"] == "zigzag" and lo["recompute"] is True
              and mo["recompute"] is False and mo["regather_ln"] is False))
PYEOF2
then ok "strategy_model: lss zigzag with model's recompute, megatron_sp's own recompute off and regather-ln off"
else bad "strategy_model: $(tail -5 best.log)"; fi

# ---- failing points: crash (96), hang (128), out of memory (160) among good ones (64, 192)
cat > faults.json <<EOF2
{"name": "faults", "mode": "strong", "strategies": ["lss"], "world": [1], "seq": [64, 96, 128, 160, 192],
 $model, "iters": 1, "warmup": 0, "timeout_s": 5, "binary": "$fake"}
EOF2
"$lssbench" sweep faults.json --out faults > faults.log 2>&1
status_of() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['status'])" "$1" 2>/dev/null; }
for pair in 64:ok 96:crashed 128:timeout 160:oom 192:ok; do
  T=${pair%%:*}; want=${pair#*:}
  got=$(status_of "faults/points/lss_w1_sp1_T$T.json")
  if [ "$got" = "$want" ]; then ok "point T=$T recorded as $want"; else bad "point T=$T: status '$got', want $want"; cat faults.log; fi
done
if ls faults/aggregate-*.json > /dev/null 2>&1 && [ "$(python3 -c "import json,glob; a=json.load(open(glob.glob('faults/aggregate-*.json')[0])); print(a['points_ok'], len(a['points_failed']))")" = "2 3" ]; then
  ok "the sweep went on and aggregated 2 ok + 3 failed"
else bad "aggregate of the fault sweep"; fi

# ---- killed half-way, then rerun: every point exactly once
cat > resume.json <<EOF2
{"name": "resume", "mode": "strong", "strategies": ["lss", "megatron_sp"], "world": [1, 2], "seq": [64, 128],
 $model, "iters": 2, "warmup": 0, "timeout_s": 60}
EOF2
"$lssbench" sweep resume.json --out resume > resume1.log 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  [ "$(ls resume/points 2>/dev/null | wc -l)" -ge 3 ] && break
  sleep 0.1
done
kill -TERM $pid
wait $pid
rc1=$?
first=$(ls resume/points | wc -l)
leftover=$(ls resume/points | grep -c tmp || true)
"$lssbench" sweep resume.json --out resume > resume2.log 2>&1
rc2=$?
total=$(ls resume/points | wc -l)
again=$(grep -c "(done before)" resume2.log)
if [ $rc1 -eq 130 ] && [ "$first" -ge 3 ] && [ "$first" -lt 8 ] && [ "$leftover" -eq 0 ] && [ $rc2 -eq 0 ] && [ "$total" -eq 8 ] && [ "$again" -eq "$first" ]; then
  ok "killed after $first of 8 points (exit 130), the rerun ran the other $((8 - first)) and skipped $again"
else
  bad "resume: first exit $rc1 with $first points ($leftover temporary), rerun exit $rc2, $total points, $again skipped"
fi
if python3 -c "import json,glob,sys; a=json.load(open(sorted(glob.glob('resume/aggregate-*.json'))[-1])); sys.exit(0 if a['points_ok']==8 and not a['points_failed'] else 1)"; then
  ok "the aggregate holds all 8 points"; else bad "aggregate after resume"; fi

# ---- max-sequence search: OOM above 300 tokens; granularity 32 -> 288, first failure 320
cat > maxseq.json <<EOF2
{"name": "maxseq", "mode": "max_seq", "strategies": ["lss"], "world": [1], "seq": [64], $model,
 "max_seq": {"granularity": 32, "limit": 4096}, "timeout_s": 60, "binary": "$fake"}
EOF2
LSS_FAKE_OOM_ABOVE=300 "$lssbench" sweep maxseq.json --out maxseq > maxseq.log 2>&1
res=$(python3 -c "import json,glob; m=json.load(open(glob.glob('maxseq/aggregate-*.json')[0]))['max_seq'][0]; print(m['max_seq'], m['first_failing_seq'], m['failure'])" 2>/dev/null)
if [ "$res" = "288 320 oom" ]; then ok "max-seq search: 288 trains, 320 runs out of memory"; else bad "max-seq search: '$res'"; cat maxseq.log; fi

# ---- max-sequence search killed during a probe (the fake hangs at 128): exit 130, nothing
# recorded for that probe, no crash; the rerun finds the points done before
cat > maxseq_kill.json <<EOF2
{"name": "maxseq_kill", "mode": "max_seq", "strategies": ["lss"], "world": [1], "seq": [64], $model,
 "max_seq": {"granularity": 32, "limit": 4096}, "timeout_s": 60, "binary": "$fake"}
EOF2
"$lssbench" sweep maxseq_kill.json --out maxseq_kill > maxseq_kill1.log 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  grep -q "probe 1" maxseq_kill1.log 2>/dev/null && break
  sleep 0.1
done
sleep 0.5
kill -TERM $pid
wait $pid
rc1=$?
if [ $rc1 -eq 130 ] && grep -q "rerun the same command" maxseq_kill1.log && ! grep -q "failed" maxseq_kill1.log \
   && [ "$(ls maxseq_kill/points)" = "maxseq_lss_w1_sp1_T64.json" ]; then
  ok "max-seq search killed during a probe: exit 130, the finished probe kept, the killed one not recorded"
else bad "max-seq search killed: exit $rc1, points $(ls maxseq_kill/points 2>&1)"; cat maxseq_kill1.log; fi

# ---- --aggregate-only: runs nothing, aggregates what the folder holds and names what it lacks
"$lssbench" sweep maxseq_kill.json --out maxseq_kill --aggregate-only > maxseq_agg.log 2>&1
res=$(python3 -c "import json,glob; a=json.load(open(glob.glob('maxseq_kill/aggregate-*.json')[0])); m=a['max_seq'][0]; print(m['max_seq'], m['complete'], m['limit_reached'], a['points_missing'])" 2>/dev/null)
if [ "$res" = "64 False False ['maxseq_lss_w1_sp1_T128']" ] && [ "$(ls maxseq_kill/points | wc -l)" -eq 1 ] && grep -q "a lower bound" maxseq_agg.log; then
  ok "--aggregate-only on a cut max-seq search: max T 64 as a lower bound, the T=128 probe missing, nothing run"
else bad "--aggregate-only max-seq: '$res'"; cat maxseq_agg.log; fi
"$lssbench" sweep parts.json --out parts --aggregate-only > parts_agg.log 2>&1
res=$(python3 -c "import json,glob; import os; a=json.load(open(max(glob.glob('parts/aggregate-*.json'), key=os.path.getmtime))); print(a['points_ok'], a['points_missing'])" 2>/dev/null)
if [ "$res" = "1 ['lss_w1_sp1_T64', 'lss_w4_sp4_T64']" ] && [ "$(ls parts/points | wc -l)" -eq 1 ]; then
  ok "--aggregate-only on a sweep run in parts: 1 point aggregated, the 1- and 4-rank points listed as missing"
else bad "--aggregate-only strong: '$res'"; cat parts_agg.log; fi
# A base point slower than serial's step at its T: the aggregate says so (base_over_serial) and
# stdout names the strategy (the lss point's time doubled by hand; no lss run is that slow).
cat > slowbase.json <<EOF2
{"name": "slowbase", "mode": "strong", "strategies": ["serial", "lss"], "world": [1], "seq": [64],
 $model, "iters": 1, "warmup": 0, "timeout_s": 60}
EOF2
"$lssbench" sweep slowbase.json --out slowbase > /dev/null 2>&1
python3 - <<'PYEOF2'
import json
p = "slowbase/points/lss_w1_sp1_T64.json"
r = json.load(open(p))
serial = json.load(open("slowbase/points/serial_w1_sp1_T64.json"))["timing"]
# One timed step each (p10 = p90 = median): lss's at twice serial's, so the spreads are apart too.
for k in ("median_ms", "p10_ms", "p90_ms"):
    r["timing"][k] = 2 * serial["median_ms"]
json.dump(r, open(p, "w"))
PYEOF2
"$lssbench" sweep slowbase.json --out slowbase --aggregate-only > slowbase_agg.log 2>&1
res=$(python3 -c "import json,glob,os; a=json.load(open(max(glob.glob('slowbase/aggregate-*.json'), key=os.path.getmtime))); print(sorted((e['strategy'], round(e['base_over_serial'], 6)) for e in a['strong_scaling']))" 2>/dev/null)
if [ "$res" = "[('lss', 2.0), ('serial', 1.0)]" ] && grep -q "note: lss's base point (T=64) takes 2.000x serial's step" slowbase_agg.log \
   && ! grep -q "note: serial" slowbase_agg.log; then
  ok "base_over_serial: a base point twice serial's step is named"
else bad "base_over_serial: '$res'"; cat slowbase_agg.log; fi

# ---- Slurm batch script
cat > slurm.json <<EOF2
{"name": "big", "mode": "weak", "strategies": ["lss"], "world": [8, 16], "seq": [1024], $model}
EOF2
"$lssbench" sweep slurm.json --out /scratch/big --emit-slurm big.sbatch --gpus-per-node 8 --time 01:30:00 > /dev/null 2>&1
if grep -q "^#SBATCH --nodes=2$" big.sbatch && grep -q "^#SBATCH --gpus-per-node=8$" big.sbatch && grep -q "^#SBATCH --time=01:30:00$" big.sbatch \
   && grep -q "sweep .*slurm.json --out /scratch/big" big.sbatch; then ok "--emit-slurm: 2 nodes x 8 GPUs"; else bad "--emit-slurm"; cat big.sbatch; fi

# ---- the committed presets are valid specs (every model option one `lssbench run` takes)
for spec in "$presets"/*.json; do
  name=$(basename "$spec" .json)
  if out=$("$lssbench" sweep "$spec" --out "$work/preset-$name" --emit-slurm "$work/preset-$name.sbatch" 2>&1); then
    ok "preset $name is a valid spec"
  else
    bad "preset $name: $out"
  fi
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
