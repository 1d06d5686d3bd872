#!/usr/bin/env bash
# Probe (not committed; the results folder keeps a copy): what the gradients' zeroing costs in the
# serial 16K step. base = HEAD's lssbench; probe = HEAD plus two environment switches:
# LSS_PROBE_NO_ZERO skips ParamStore::zero_grads' memset, LSS_PROBE_DW_BETA0 makes the weight-gradient
# GEMMs overwrite (beta 0). The gradients of the small parameters are then wrong: timing only.
set -u
cd "$(dirname "$0")/.."
dev=$PWD/.device
[ -x "$dev/bin/lssbench" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
[ -x "$dev/probe_lssbench" ] || { xz -dc "$dev/probe_lssbench.xz" > "$dev/probe_lssbench" && chmod +x "$dev/probe_lssbench"; }
export LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
out=${OUT:-/tmp/out}; mkdir -p "$out"
t0=$(date +%s)
model="--layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda --strategy serial --seq 16K --warmup 3 --iters 10 --no-bound"
for rep in 1 2 3; do
  for v in base nozero nozero_beta0; do
    bin=$dev/probe_lssbench; env=()
    case $v in base) bin=$dev/bin/lssbench ;; nozero) env=(LSS_PROBE_NO_ZERO=1) ;; nozero_beta0) env=(LSS_PROBE_NO_ZERO=1 LSS_PROBE_DW_BETA0=1) ;; esac
    echo "=== $v rep $rep ($(( $(date +%s) - t0 )) s)" | tee -a "$out/log.txt"
    env "${env[@]}" timeout 100 "$bin" run $model --out "$out/${v}_r$rep.json" 2>&1 | grep -E "step median|forward|device during|rror" | tee -a "$out/log.txt"
  done
done
cd "$out" && tar czf runs.tar.gz ./*.json && rm -f ./*.json
