#!/usr/bin/env bash
# Real outputs validate against schema v1, with --check passing for every strategy.
# usage: result_json.sh LSSBENCH MPIEXEC
set -u
lssbench=$(realpath "$1")
mpiexec=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
total=0
point() {  # point NP NAME args...
  local np=$1 name=$2
  shift 2
  total=$((total + 1))
  if ! timeout 120 "$mpiexec" -n "$np" "$lssbench" run --layers 2 --width 32 --heads 4 --seq 64 --iters 2 \
      --threads 1 --check "$@" --out "$work/$name.json" > "$work/$name.log" 2>&1; then
    failures=$((failures + 1)); echo "FAIL: $name did not run"; sed 's/^/    | /' "$work/$name.log" | tail -20; return
  fi
  if ! "$lssbench" validate "$work/$name.json"; then failures=$((failures + 1)); echo "FAIL: $name is not valid"; return; fi
  if ! python3 -c "import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r['check']['passed'] and r['status']=='ok' else 1)" "$work/$name.json"; then
    failures=$((failures + 1)); echo "FAIL: $name: check or status"; return
  fi
  echo "ok:   $name"
}
point 1 serial --strategy serial
point 2 lss --strategy lss --sp 2 --batch 2
point 4 lss_dp --strategy lss --sp 2 --batch 2 --keep-kv
point 2 megatron --strategy megatron_sp --sp 2 --dtype fp64
point 4 megatron_dp --strategy megatron_sp --sp 2 --batch 2 --check-seq 32
echo "$((total - failures)) passed, $failures failed"
[ "$failures" -eq 0 ]
