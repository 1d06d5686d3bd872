#!/usr/bin/env bash
# Call 2 (1 x H200): the forward alone at D = 128 (and 64), u1 (masked descriptors) against u2
# (descriptors from the tile's, 3104 -> 2920 SASS instructions in the D = 128 forward), alternating twice.
set -u
dev=$PWD/.device
[ -x "$dev/bin/bench_attention" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
for v in u1 u2; do [ -x "$dev/$v/bench_attention" ] || { mkdir -p "$dev/$v" && tar -C "$dev/$v" -xJf "$dev/$v.tar.xz"; }; done
export LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
root=${OUT:-/tmp/out}; out=$root/fwd; mkdir -p "$out"
filter="BM_Attention/T:(4096|16384|65536)/D:(64|128)/causal:(0|1)/path:0/bwd:0"
for rep in 1 2; do
  for v in u1 u2; do
    echo "=== forward $v rep $rep" | tee -a "$out/log.txt"
    timeout 100 "$dev/$v/bench_attention" --benchmark_filter="$filter" \
      --benchmark_out="$out/fwd_${v}_r${rep}.json" --benchmark_out_format=json 2>&1 | grep -E 'TFLOP|ERROR|error' | cut -c1-120 | tee -a "$out/log.txt"
  done
done
cd "$root" && tar czf fwd.tar.gz fwd && rm -rf fwd
