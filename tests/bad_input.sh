#!/usr/bin/env bash
# Bad input gets a message naming the bad value from every rank and a non-zero exit, never a
# hang: each case runs under a 60 s timeout.  usage: bad_input.sh LSSBENCH MPIEXEC
set -u
lssbench=$(realpath "$1")
mpiexec=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
echo '{}' > existing.json
printf 'short' > short.bin
failures=0
cases=0

# expect NP "message fragment" args...
expect() {
  local np=$1 fragment=$2
  shift 2
  cases=$((cases + 1))
  local out rc
  out=$(timeout 60 "$mpiexec" -n "$np" "$lssbench" "$@" --out "$work/r$cases.json" 2>&1)
  rc=$?
  local problem=""
  if [ "$rc" -eq 0 ]; then problem="exit code 0"; fi
  if [ "$rc" -eq 124 ]; then problem="hung (timed out)"; fi
  for ((r = 0; r < np; r++)); do
    if ! grep -F -- "[rank $r] lssbench: error:" <<<"$out" | grep -qF -- "$fragment"; then
      problem="$problem; rank $r did not report '$fragment'"
    fi
  done
  if [ -e "$work/r$cases.json" ]; then problem="$problem; wrote a result"; fi
  if [ -n "$problem" ]; then
    failures=$((failures + 1))
    echo "FAIL: -n $np lssbench $*: $problem"
    echo "$out" | sed 's/^/    | /' | head -20
  else
    echo "ok:   -n $np lssbench $* -> exit $rc"
  fi
}

expect 1 "--layers 0: must be positive" run --layers 0
expect 1 "--width -4: must be positive" run --width -4
expect 1 "--width 30 does not divide by --heads 4" run --width 30 --heads 4
expect 1 "--seq 256 exceeds the positional table (--max-seq 128)" run --seq 256 --max-seq 128
expect 1 "unknown option '--bogus'" run --bogus 3
expect 1 "'12x' is not a whole number" run --seq 12x
expect 1 "--lr: 'abc' is not a finite number" run --lr abc
expect 1 "--dtype: unknown value 'fp16'" run --dtype fp16
expect 1 "--bound-heat -0.5: must not be negative" run --bound-heat -0.5
expect 1 "--bound-heat: 'hot' is not a finite number" run --bound-heat hot
expect 1 "--bound-heat 600: at most 60 seconds" run --bound-heat 600
expect 2 "--min-time -1: must be between 0 and 3600 seconds" run --min-time -1
expect 1 "--strategy: unknown value 'nope'" run --strategy nope
expect 1 "--dtype bf16: the cpu backend computes in fp32 or fp64" run --dtype bf16
expect 2 "--grad-reduce-dtype: unknown value 'fp8'" run --strategy lss --sp 2 --grad-reduce-dtype fp8
expect 2 "--grad-reduce-dtype fp64: wider than the gradients (fp32" run --strategy lss --sp 2 --grad-reduce-dtype fp64
expect 2 "--grad-reduce-dtype bf16: the cpu backend has no bf16" run --strategy lss --sp 2 --grad-reduce-dtype bf16
expect 1 "--data /nonexistent/enwik8: cannot be opened" run --data /nonexistent/enwik8
expect 1 "--data short.bin: 5 bytes, fewer than one sequence" run --data short.bin --seq 64
expect 1 "option --iters needs a value" run --iters
expect 1 "unknown command 'frobnicate'" frobnicate
expect 1 "--recompute: --strategy serial keeps every activation" run --strategy serial --recompute
expect 2 "--strategy serial runs on one rank" run --strategy serial --batch 2
expect 2 "--seq 127 does not divide by --sp 2" run --strategy lss --sp 2 --seq 127
expect 2 "--heads 3 does not divide by --sp 2" run --strategy megatron_sp --sp 2 --heads 3 --width 48
expect 2 "--scatter-chunks 3 does not divide the 128 rows each rank holds (T/P x B/R = 128 x 1)" run --strategy megatron_sp --sp 2 --seq 256 --scatter-chunks 3
expect 2 "--scatter-chunks -2: must not be negative" run --strategy megatron_sp --sp 2 --scatter-chunks -2
expect 2 "--scatter-chunks: an option of megatron_sp, which --strategy lss does not read" run --strategy lss --sp 2 --scatter-chunks 2
expect 2 "--sp 3: the world size 2" run --strategy lss --sp 3
expect 2 "--copy-engine-gathers: the cpu backend has no copy engines (needs --backend cuda)" run --strategy lss --sp 2 --copy-engine-gathers
expect 2 "--registered-gathers: the cpu backend has no NCCL to register with (needs --backend cuda)" run --strategy lss --sp 2 --registered-gathers
expect 2 "--copy-engine-gathers with --registered-gathers: the sequence group's buffers are in one kind of NCCL memory (copy-engine windows, registered blocks or symmetric windows), not two (give one of them)" run --strategy lss --sp 2 --registered-gathers --copy-engine-gathers
expect 2 "--registered-gathers with --symmetric-collectives: the sequence group's buffers are in one kind of NCCL memory" run --strategy megatron_sp --sp 2 --symmetric-collectives --registered-gathers
expect 2 "--symmetric-collectives: the cpu backend has no NCCL symmetric memory (needs --backend cuda)" run --strategy lss --sp 2 --symmetric-collectives
expect 2 "--symmetric-ctas 16: the blocks of NCCL's symmetric kernels, which run only with --symmetric-collectives" run --strategy lss --sp 2 --symmetric-ctas 16
expect 2 "--symmetric-ctas 65: must be 0 (NCCL's pick) to 64" run --strategy megatron_sp --sp 2 --symmetric-collectives --symmetric-ctas 65
expect 2 "--copy-engine-gathers with --distributed-optimizer: the parameter all-gathers cannot run on the copy engines (give one of the two)" run --strategy lss --sp 2 --copy-engine-gathers --distributed-optimizer
expect 2 "--chunk-pipeline needs --zigzag, a causal mask and --split-causal (given: --no-zigzag, --causal, --split-causal)" run --strategy lss --sp 2 --chunk-pipeline
expect 2 "--placed-reduce-scatter needs --zigzag" run --strategy lss --sp 2 --placed-reduce-scatter
expect 2 "--local-cross-block needs --zigzag, a causal mask and --split-causal, without --chunk-pipeline (given: --zigzag, --causal, --split-causal, --chunk-pipeline)" run --strategy lss --sp 2 --zigzag --chunk-pipeline --local-cross-block
expect 2 "--local-cross-block needs --zigzag, a causal mask and --split-causal, without --chunk-pipeline (given: --no-zigzag, --causal, --split-causal)" run --strategy lss --sp 2 --local-cross-block
expect 2 "--local-cross-block: an option of lss, which --strategy megatron_sp does not read" run --strategy megatron_sp --sp 2 --local-cross-block
expect 2 "--placed-gather-min -1M: must not be negative" run --strategy lss --sp 2 --zigzag --placed-gather-min -1M
expect 2 "--zigzag: an option of lss, which --strategy megatron_sp does not read" run --strategy megatron_sp --sp 2 --zigzag
expect 2 "--regather-ln: an option of megatron_sp, which --strategy lss does not read" run --strategy lss --sp 2 --no-regather-ln
expect 2 "--bound-heat -1: must not be negative" run --strategy lss --sp 2 --bound-heat -1
expect 2 "--trace $work/existing.json: exists already; files are never overwritten" run --strategy lss --sp 2 --trace "$work/existing.json"
expect 2 "--trace t.json: the same file as --out or --export" run --strategy lss --sp 2 --trace t.json --export t.json
expect 2 "--trace-steps 0: must be at least 1" run --strategy lss --sp 2 --trace t.json --trace-steps 0
expect 4 "--seq 130 does not divide by --sp 4" run --strategy lss --sp 4 --seq 130 --max-seq 256
expect 4 "--batch 1 does not divide by the 2 data-parallel replicas" run --strategy lss --sp 2 --batch 1
expect 4 "--sp 3: the world size 4" run --strategy megatron_sp --sp 3
expect 4 "--zigzag: --seq 68 does not divide by 2 x --sp = 8" run --strategy lss --sp 4 --seq 68 --zigzag

# An existing result is never overwritten (the case writes to existing.json, not r<N>.json).
cases=$((cases + 1))
out=$(timeout 60 "$mpiexec" -n 2 "$lssbench" run --strategy lss --sp 2 --out existing.json 2>&1)
rc=$?
if [ "$rc" -ne 0 ] && [ "$(cat existing.json)" = "{}" ] && [ "$(grep -c 'exists already' <<<"$out")" -eq 2 ]; then
  echo "ok:   existing --out is refused on both ranks and left as it was"
else
  failures=$((failures + 1))
  echo "FAIL: existing --out: exit $rc"
  echo "$out" | sed 's/^/    | /' | head -20
fi

# Without --out, a run whose default name (its second) is taken writes beside it with "-2", not
# an error: the names of the next seconds are made first, so the run's second is taken whenever it starts.
cases=$((cases + 1))
mkdir -p results/runs
now=$(date -u +%s)
for d in 0 1 2 3 4 5 6 7 8 9; do echo '{}' > "results/runs/lss_cpu_w2_sp2_T64_$(date -u -d "@$((now + d))" +%Y%m%dT%H%M%SZ).json"; done
out=$(timeout 60 "$mpiexec" -n 2 "$lssbench" run --strategy lss --sp 2 --seq 64 --width 32 --heads 2 --layers 1 \
  --iters 1 --warmup 0 --no-measure-peak --no-bound 2>&1)
rc=$?
written=$(sed -n 's/^ *wrote //p' <<<"$out")
if [ "$rc" -eq 0 ] && [[ "$written" == results/runs/lss_cpu_w2_sp2_T64_*Z-2.json ]] && [ -s "$written" ] &&
   [ "$(grep -l '^{}$' results/runs/*.json | wc -l)" -eq 10 ]; then
  echo "ok:   a taken default name: the run wrote $written, the others left as they were"
else
  failures=$((failures + 1))
  echo "FAIL: taken default name: exit $rc, wrote '$written'"
  echo "$out" | sed 's/^/    | /' | tail -5
fi

echo "$((cases - failures)) passed, $failures failed"
[ "$failures" -eq 0 ]
