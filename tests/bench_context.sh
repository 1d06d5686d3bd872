#!/usr/bin/env bash
# bench_kernels and bench_collectives name the build in their JSON: context.git_commit equals the
# commit stamped into the build (generated/lss_git_commit.h), which scripts/ab_summary.py puts at
# the head of an A/B's tables. bench_collectives also refuses a bad choice of operand memory on
# every rank, with the flags named and a non-zero exit.
# usage: bench_context.sh BENCH_KERNELS BENCH_COLLECTIVES MPIEXEC COMMIT_HEADER
set -uo pipefail
kernels=$1 collectives=$2 mpiexec=$3 header=$4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
want=$(sed -n 's/^#define LSS_GIT_COMMIT "\(.*\)"$/\1/p' "$header")
[ -n "$want" ] || { echo "FAIL: no LSS_GIT_COMMIT in $header"; exit 1; }
"$kernels" --benchmark_filter='attention_merge/Tq:256/' --benchmark_min_time=0.01 \
  --benchmark_out="$work/kernels.json" --benchmark_out_format=json >/dev/null ||
  { echo "FAIL: bench_kernels exited $?"; exit 1; }
"$mpiexec" -n 2 "$collectives" --benchmark_filter='all_gather/bytes:65536/' --benchmark_min_time=0.01 \
  --benchmark_out="$work/collectives.json" --benchmark_out_format=json >/dev/null ||
  { echo "FAIL: bench_collectives exited $?"; exit 1; }
fail=0
for f in kernels collectives; do
  got=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["context"].get("git_commit", "<missing>"))' "$work/$f.json")
  if [ "$got" = "$want" ]; then echo "bench_$f: git_commit $got"; else echo "FAIL: bench_$f: git_commit '$got', the build is '$want'"; fail=1; fi
done
# refuse FRAGMENT ARGS...: every rank names the bad flags and the run exits non-zero, in time.
refuse() {
  local fragment=$1 out rc
  shift
  out=$(timeout 60 "$mpiexec" -n 2 "$collectives" --benchmark_filter='all_gather/bytes:65536/' "$@" 2>&1)
  rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ "$(grep -cF -- "$fragment" <<<"$out")" -eq 2 ]; then
    echo "bench_collectives $*: refused ($fragment)"
  else
    echo "FAIL: bench_collectives $*: exit $rc, want non-zero with '$fragment' from both ranks"; echo "$out" | tail -5; fail=1
  fi
}
refuse "--copy-engine with --registered: the operands live in one kind of memory (give one)" --copy-engine --registered
refuse "--symmetric needs --backend=cuda" --symmetric --backend=cpu
refuse "--symmetric-ctas=16: the blocks of NCCL's symmetric kernels, which run only with --symmetric" --symmetric-ctas=16
refuse "--symmetric-ctas=65: must be 0 (NCCL's pick) to 64" --symmetric --symmetric-ctas=65
refuse "--symmetric-ctas=: must be 0 (NCCL's pick) to 64" --symmetric --symmetric-ctas=
refuse "--symmetric-ctas=2x: must be 0 (NCCL's pick) to 64" --symmetric --symmetric-ctas=2x
exit $fail
