#!/usr/bin/env bash
# Probe (not committed): backward variants of the wgmma flash kernel (LSS_FLASH_BWD_VARIANT).
set -u
cd "$(dirname "$0")/.."
dev=$PWD/.device
[ -x "$dev/bin/bench_attention" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
export LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
out=${OUT:-/tmp/out}; mkdir -p "$out"
t0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,power.draw,power.limit --format=csv | tee "$out/log.txt"
for v in ${TEST_VARIANTS:-}; do
  echo "=== variant $v tests ($(( $(date +%s) - t0 )) s)" | tee -a "$out/log.txt"
  LSS_FLASH_BWD_VARIANT=$v timeout 200 "$dev/bin/test_cuda_attention" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -6 | tee -a "$out/log.txt"
done
for rep in 1 2; do
for vf in $(for v in $VARIANTS; do echo "$v:$FILTER"; done; for v in ${VARIANTS2:-}; do echo "$v:$FILTER2"; done); do
  v=${vf%%:*}; FILT=${vf#*:}
  echo "=== variant $v bench rep $rep ($(( $(date +%s) - t0 )) s)" | tee -a "$out/log.txt"
  LSS_FLASH_BWD_VARIANT=$v timeout 200 "$dev/bin/bench_attention" --benchmark_filter="$FILT" \
    --benchmark_out="$out/bench_v${v}_r${rep}_$(echo "$FILT" | cksum | cut -c1-6).json" --benchmark_out_format=json 2>&1 | grep -E 'TFLOP|ERROR|error' | cut -c1-150 | tee -a "$out/log.txt"
done; done
for v in ${NCU_VARIANTS:-}; do
  echo "=== variant $v ncu ($(( $(date +%s) - t0 )) s)" | tee -a "$out/log.txt"
  LSS_FLASH_BWD_VARIANT=$v timeout 150 ncu --clock-control none --set full --import-source no -k regex:flash_bwd_sm90 --launch-count 1 \
    -f -o "$out/ncu_v$v" "$dev/bin/bench_attention" --benchmark_min_time=0.001 \
    --benchmark_filter='BM_Attention/T:16384/D:128/causal:1/path:0/bwd:1' > "$out/ncu_v${v}_log.txt" 2>&1
  ncu --import "$out/ncu_v$v.ncu-rep" --page source --print-source sass --csv > "$out/ncu_v${v}_sass.csv" 2>&1
  ncu --import "$out/ncu_v$v.ncu-rep" --page details > "$out/ncu_v${v}_details.txt" 2>&1
  ls -la "$out"/ncu_v$v* | tee -a "$out/log.txt"; head -c 600 "$out/ncu_v${v}_sass.csv" | tee -a "$out/log.txt"
done
echo "=== end ($(( $(date +%s) - t0 )) s)" | tee -a "$out/log.txt"
cd "$out" && tar czf bench.tar.gz bench_v*.json && rm -f bench_v*.json
