#!/usr/bin/env bash
# scripts/ncu_sass_summary.py on a real Nsight Compute source-counter export (the D = 128 flash
# backward at T = 16K causal on an H200, results/h200-x2/20261129T1340-d64-turns-two-gpus) against
# the numbers of that folder's NOTES.md (counted from the same CSV by a separate script), and on
# inputs it must refuse.
# usage: ncu_summary.sh SOURCE_ROOT
set -uo pipefail
root=$1
tool=$root/scripts/ncu_sass_summary.py
fixture=$root/results/h200-x2/20261129T1340-d64-turns-two-gpus/call1/ab/ncu_bwd_d128_sass.csv.xz
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0
expect() {  # PATTERN: must appear in the summary
  grep -qF -- "$1" "$work/out.txt" || { echo "FAIL: summary lacks: $1"; fail=1; }
}
python3 "$tool" "$fixture" --top 5 >"$work/out.txt" 2>&1 || { cat "$work/out.txt"; echo "FAIL: exit $? on the fixture"; exit 1; }
cat "$work/out.txt"
expect "2784 SASS instructions, 467427 warp-state samples"
expect "barrier               26.6%"
expect "hottest loop: 597 instructions per iteration and warp, executed 2097152 times"
expect "250 of them uniform-datapath or R2UR"
expect "HGMMA:32"
expect "WARPGROUP.DEPBAR.LE gsb0, 0x0"
# The plain CSV reads the same as the compressed one.
python3 -c 'import lzma, sys; sys.stdout.write(lzma.open(sys.argv[1], "rt").read())' "$fixture" >"$work/plain.csv"
python3 "$tool" "$work/plain.csv" --top 5 >"$work/plain.txt" 2>&1 && cmp -s "$work/out.txt" "$work/plain.txt" ||
  { echo "FAIL: the uncompressed CSV summarises differently"; fail=1; }
# A details-page export (no source counters) and an empty file are refused with a message.
printf '"ID","Kernel Name","Metric Name","Metric Value"\n"0","k","Duration","1"\n' >"$work/details.csv"
if python3 "$tool" "$work/details.csv" >"$work/bad.txt" 2>&1; then echo "FAIL: accepted a CSV without source counters"; fail=1; fi
grep -q "no 'Warp Stall Sampling (All Samples)' column" "$work/bad.txt" || { cat "$work/bad.txt"; echo "FAIL: no message naming the missing column"; fail=1; }
: >"$work/empty.csv"
if python3 "$tool" "$work/empty.csv" >"$work/bad.txt" 2>&1; then echo "FAIL: accepted an empty file"; fail=1; fi
if python3 "$tool" "$work/absent.csv" >"$work/bad.txt" 2>&1; then echo "FAIL: accepted a missing file"; fail=1; fi
grep -qF "absent.csv: [Errno 2]" "$work/bad.txt" || { cat "$work/bad.txt"; echo "FAIL: no message naming the missing file"; fail=1; }
[ $fail -eq 0 ] && echo "ok"
exit $fail
