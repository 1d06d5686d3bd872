#!/usr/bin/env bash
# The kernel A/B tools without a GPU:
# 1. scripts/ab_summary.py on a real A/B (base a774e10 against the probe n1 on an H200,
#    results/h200-x1/20261129T1530-flash-bwd-desc-d128/call1/ab): its changes against the ones
#    in that folder's NOTES.md, which were computed by hand from the same JSON, with "~" on those
#    within a side's own spread over its rounds; and the inputs it must refuse.
# 2. gpu_perf.sh's ab-kernel section end to end on stand-in binaries that write fixed rates
#    (bench_attention, bench_kernels, lssbench: base 500 TFLOP/s, 2000 GB/s, 60 ms), with two
#    variants: v1 carries bench_attention, lssbench and test_cuda_attention (510, -, 57), k1 only
#    bench_kernels and test_cuda_kernels (-, 2080, -). Each variant's tests run, each benchmark in
#    the order base and the variants that carry it, twice; the summary shows +2.0%, +4.0% and
#    -5.0% and "-" where a variant lacks the row; v1's change.diff comes back in the points; a
#    rebuilt v1 (a newer archive) is unpacked again.
#    Section ab runs an unpacked variant's lssbench as its new side (LSS_AB_NEW); section
#    contention, on two stand-in GPUs, runs serial, then lss and megatron_sp with overlap on and
#    off, each traced; section attention-heat runs bench_attention's heated rows into
#    bench_attention_heated.json and prints their power, clock and pJ/FLOP.
# 3. scripts/gpu_variant.sh refuses a bad variant name and a binary ab-kernel does not run, naming them.
# 4. scripts/gpu_run.sh refuses an unknown argument before it runs anything, and --unpack-only
#    unpacks the bundle and stops.
# usage: ab_kernel.sh SOURCE_ROOT
set -uo pipefail
root=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0
expect() {  # FILE PATTERN: must appear in FILE
  grep -qF -- "$2" "$1" || { echo "FAIL: $(basename "$1") lacks: $2"; fail=1; }
}

# ---- 1. the summary on real JSON ----
ab=$root/results/h200-x1/20261129T1530-flash-bwd-desc-d128/call1/ab
side() { local s=$1; echo "$s=$ab/bench_bwd1_${s}_r1.json,$ab/bench_bwd1_${s}_r2.json,$ab/serial_h16_${s}_r1_T16K.json,$ab/serial_h16_${s}_r2_T16K.json"; }
python3 "$root/scripts/ab_summary.py" "$(side base)" "$(side n1)" >"$work/real.txt" 2>&1 ||
  { cat "$work/real.txt"; echo "FAIL: ab_summary exit $? on the real A/B"; exit 1; }
cat "$work/real.txt"
expect "$work/real.txt" "builds: base = a774e1072330; n1 = a774e1072330-dirty"
expect "$work/real.txt" "BM_Attention/T:16384/D:128/causal:1/path:0/bwd:1  594.22, 594.75  604.46, 602.63  (+1.5%)"
expect "$work/real.txt" "BM_Attention/T:65536/D:64/causal:0/path:0/bwd:1   476.16, 479.21  488.22, 489.14  (+2.3%)"
expect "$work/real.txt" "serial T=16384 H=16 world=1  57.93, 58.09  57.52, 57.98  (-0.4% ~)"
# Within n1's own range over its rounds (621.49 to 628.28, 1.1%): marked as not told from noise.
expect "$work/real.txt" "BM_Attention/T:65536/D:128/causal:1/path:0/bwd:1  621.06, 621.50  621.49, 628.28  (+0.6% ~)"
refuse() {  # WHAT ARGS...: exit 2 and a message naming the bad input
  local what=$1
  shift
  python3 "$root/scripts/ab_summary.py" "$@" >"$work/bad.txt" 2>&1
  local rc=$?
  [ $rc -eq 2 ] || { echo "FAIL: $what: exit $rc, expected 2"; fail=1; }
  grep -q "ab_summary: .*$what" "$work/bad.txt" || { echo "FAIL: $what: message does not name it:"; cat "$work/bad.txt"; fail=1; }
}
refuse "$work/missing.json" "base=$work/missing.json" "n1=$ab/bench_bwd1_n1_r1.json"
echo '{"something": 1}' >"$work/other.json"
refuse "$work/other.json" "base=$work/other.json" "n1=$ab/bench_bwd1_n1_r1.json"
refuse "nofiles" "nofiles" "n1=$ab/bench_bwd1_n1_r1.json"

# ---- 2. gpu_perf.sh ab-kernel on stand-ins ----
repo=$work/repo
mkdir -p "$repo/scripts" "$repo/plots" "$repo/.device/bin" "$repo/.device/mpich/bin" "$work/stub" "$work/v1"
cp "$root/scripts/gpu_perf.sh" "$root/scripts/ab_summary.py" "$repo/scripts/"
cp "$root/plots/jsonfile.py" "$repo/plots/"  # ab_summary's JSON loader
printf '#!/bin/sh\necho "GPU 0: stand-in (UUID: GPU-0)"\n' >"$work/stub/nvidia-smi"
# mpiexec.hydra -n N EXE ARGS...: run EXE once.
printf '#!/bin/sh\nshift 2\nexec "$@"\n' >"$repo/.device/mpich/bin/mpiexec.hydra"
make_stand_ins() {  # DIR TFLOPS MS
  cat >"$1/bench_attention" <<EOF
#!/usr/bin/env bash
echo "\$(basename "\$(dirname "\$0")") bench_attention \$*" >>"$work/calls.txt"
for a in "\$@"; do case \$a in --benchmark_out=*) out=\${a#*=} ;; esac; done
cat >"\$out" <<J
{"context": {"git_commit": "stand-in-$2"}, "benchmarks": [
 {"name": "BM_Attention/T:16384/D:128/causal:1/path:0/bwd:1/manual_time", "run_type": "iteration", "TFLOP/s": $2}]}
J
EOF
  cat >"$1/lssbench" <<EOF
#!/usr/bin/env bash
echo "\$(basename "\$(dirname "\$0")") lssbench \$*" >>"$work/calls.txt"
while [ \$# -gt 0 ]; do case \$1 in --out) out=\$2; shift ;; --heads) heads=\$2; shift ;; esac; shift; done
cat >"\$out" <<J
{"schema_version": 1, "status": "ok", "strategy": "serial", "grid": {"world": 1},
 "config": {"seq": 16384, "heads": \$heads},
 "machine": {"git_commit": "stand-in-$2"},
 "timing": {"median_ms": $3, "comm_median_ms": 0, "comm_exposed_median_ms": 0},
 "metrics": {"tflops_per_gpu": 1, "peak_mem_bytes": 1}, "comm": {"matches_model": true}}
J
EOF
  cat >"$1/bench_kernels" <<EOF
#!/usr/bin/env bash
echo "\$(basename "\$(dirname "\$0")") bench_kernels \$*" >>"$work/calls.txt"
for a in "\$@"; do case \$a in --benchmark_out=*) out=\${a#*=} ;; esac; done
cat >"\$out" <<J
{"context": {"git_commit": "stand-in-$2"}, "benchmarks": [
 {"name": "attention_merge/Tq:8192/H:16/D:128/manual_time", "run_type": "iteration", "GB/s": $(($2 * 4))}]}
J
EOF
  for t in test_cuda_attention test_cuda_kernels; do
    printf '#!/bin/sh\necho "$(basename "$(dirname "$0")") %s" >>"%s"\n' "$t" "$work/calls.txt" >"$1/$t"
  done
  chmod +x "$1"/*
}
make_stand_ins "$repo/.device/bin" 500 60
make_stand_ins "$work/v1" 510 57
echo "+the variant's change" >"$work/v1/change.diff"
tar -C "$work/v1" -cJf "$repo/.device/v1.tar.xz" bench_attention lssbench test_cuda_attention change.diff
# A second variant with only the memory-bound kernels' test and benchmark (e.g. a merge kernel).
mkdir -p "$work/k1"
make_stand_ins "$work/k1" 520 59
tar -C "$work/k1" -cJf "$repo/.device/k1.tar.xz" bench_kernels test_cuda_kernels
chmod +x "$work/stub/nvidia-smi" "$repo/.device/mpich/bin/mpiexec.hydra"
(cd "$repo" && PATH=$work/stub:$PATH OUT=$work/out TMPDIR=$work LSS_AB_KERNEL_PASSES=1 \
  bash scripts/gpu_perf.sh ab-kernel >"$work/run.txt" 2>&1)
rc=$?
[ $rc -eq 0 ] || { cat "$work/run.txt"; echo "FAIL: gpu_perf.sh ab-kernel exit $rc"; fail=1; }
cat "$work/out/ab_kernel.txt" 2>/dev/null || echo "FAIL: no ab_kernel.txt"
expect "$work/out/ab_kernel.txt" "builds: base = stand-in-500; k1 = stand-in-520; v1 = stand-in-510"
expect "$work/out/ab_kernel.txt" "BM_Attention/T:16384/D:128/causal:1/path:0/bwd:1  500.00, 500.00  -   510.00, 510.00  (+2.0%)"
expect "$work/out/ab_kernel.txt" "attention_merge/Tq:8192/H:16/D:128  2000.00, 2000.00  2080.00, 2080.00  (+4.0%)  -"
expect "$work/out/ab_kernel.txt" "serial T=16384 H=16 world=1  60.00, 60.00  -   57.00, 57.00  (-5.0%)"
# The order of the runs: each variant's tests, then per benchmark the base and the variants that
# carry it, alternating, twice.
order=$(awk '{print $1, $2}' "$work/calls.txt" | paste -sd'|' -)
want="k1 test_cuda_kernels|v1 test_cuda_attention|bin bench_attention|v1 bench_attention|bin bench_attention|v1 bench_attention"
want+="|bin bench_kernels|k1 bench_kernels|bin bench_kernels|k1 bench_kernels|bin lssbench|v1 lssbench|bin lssbench|v1 lssbench"
[ "$order" = "$want" ] || { echo "FAIL: run order"; echo "  got:  $order"; echo "  want: $want"; fail=1; }
# Listed to a file first: under pipefail, grep -q quitting early would fail tar with SIGPIPE.
tar -tzf "$work/out/points.tar.gz" >"$work/points_list.txt"
grep -q "points/abk_v1_change.diff" "$work/points_list.txt" || { echo "FAIL: the variant's change.diff is not in the points"; fail=1; }
# The step A/B (section ab) of the bundle's lssbench against the unpacked variant's (LSS_AB_NEW):
# base, new, base, new, the new side running v1's binary; a missing LSS_AB_NEW fails by name.
: >"$work/calls.txt"
(cd "$repo" && PATH=$work/stub:$PATH OUT=$work/out4 TMPDIR=$work LSS_AB_BASE=.device/bin/lssbench \
  LSS_AB_NEW=.device/v1/lssbench LSS_AB_STRATEGIES=serial LSS_AB_SEQ_PER_GPU=16 \
  bash scripts/gpu_perf.sh ab >"$work/run4.txt" 2>&1) || { cat "$work/run4.txt"; echo "FAIL: ab with LSS_AB_NEW exited non-zero"; fail=1; }
order=$(awk '{print $1, $2}' "$work/calls.txt" | paste -sd'|' -)
want="bin lssbench|v1 lssbench|bin lssbench|v1 lssbench"
[ "$order" = "$want" ] || { echo "FAIL: ab with LSS_AB_NEW: run order"; echo "  got:  $order"; echo "  want: $want"; fail=1; }
(cd "$repo" && PATH=$work/stub:$PATH OUT=$work/out5 TMPDIR=$work LSS_AB_BASE=.device/bin/lssbench \
  LSS_AB_NEW=.device/none/lssbench bash scripts/gpu_perf.sh ab >"$work/run5.txt" 2>&1) &&
  { echo "FAIL: ab with a missing LSS_AB_NEW exited 0"; fail=1; }
expect "$work/run5.txt" "NOT-RUN ab: LSS_AB_NEW"
# A rebuilt variant (a newer archive of the same name) is unpacked again, not run from the old
# unpacking: v1 now at 530 TFLOP/s.
make_stand_ins "$work/v1" 530 57
tar -C "$work/v1" -cJf "$repo/.device/v1.tar.xz" bench_attention lssbench test_cuda_attention change.diff
touch -d "+2 seconds" "$repo/.device/v1.tar.xz"
(cd "$repo" && PATH=$work/stub:$PATH OUT=$work/out3 TMPDIR=$work LSS_AB_KERNEL_PASSES=1 LSS_AB_VARIANTS=v1 \
  bash scripts/gpu_perf.sh ab-kernel >"$work/run3.txt" 2>&1) || { cat "$work/run3.txt"; echo "FAIL: the rerun exited non-zero"; fail=1; }
expect "$work/out3/ab_kernel.txt" "500.00, 500.00  530.00, 530.00  (+6.0%)"
# No variant archive: the section says so and the script fails.
rm -f "$repo/.device/v1.tar.xz" "$repo/.device/k1.tar.xz"
rm -rf "$repo/.device/v1" "$repo/.device/k1"
(cd "$repo" && PATH=$work/stub:$PATH OUT=$work/out2 TMPDIR=$work bash scripts/gpu_perf.sh ab-kernel >"$work/run2.txt" 2>&1)
rc=$?
[ $rc -ne 0 ] || { echo "FAIL: ab-kernel without variants exited 0"; fail=1; }
expect "$work/run2.txt" "NOT-RUN ab-kernel: no variant archive"

# The attention-heat section: bench_attention's heated rows only, into bench_attention_heated.json
# in the points, and the summary line with the card's counters (a stand-in that writes them).
cat >"$work/heated.json" <<'J'
{"context": {"git_commit": "stand-in"}, "benchmarks": [
 {"name": "BM_AttentionHeated/T:16384/D:128/causal:1/path:0/bwd:1/iterations:390/manual_time", "run_type": "iteration",
  "real_time": 6.6, "TFLOP/s": 581.7, "W": 692.4, "MHz": 1665, "capped": 1.0, "pJ/FLOP": 1.196,
  "label": "flash-wgmma fwd+bwd causal B=1 H=16 D=128 T=16384 heated"}]}
J
mv "$repo/.device/bin/bench_attention" "$work/bench_attention.ab"
printf '#!/usr/bin/env bash\necho "bin bench_attention $*" >>"%s"\nfor a in "$@"; do case $a in --benchmark_out=*) out=${a#*=} ;; esac; done\ncp "%s" "$out"\n' \
  "$work/calls.txt" "$work/heated.json" >"$repo/.device/bin/bench_attention"
chmod +x "$repo/.device/bin/bench_attention"
: >"$work/calls.txt"
(cd "$repo" && PATH=$work/stub:$PATH OUT=$work/out10 TMPDIR=$work bash scripts/gpu_perf.sh attention-heat >"$work/run10.txt" 2>&1) ||
  { cat "$work/run10.txt"; echo "FAIL: gpu_perf.sh attention-heat exited non-zero"; fail=1; }
expect "$work/calls.txt" "bench_attention_heated.json --benchmark_out_format=json --benchmark_filter=BM_AttentionHeated"
expect "$work/run10.txt" "581.7 TFLOP/s     692 W    1665 MHz    1.00 capped   1.196 pJ/FLOP"
tar -tzf "$work/out10/points.tar.gz" >"$work/points_list10.txt"
grep -q "points/bench_attention_heated.json" "$work/points_list10.txt" ||
  { echo "FAIL: bench_attention_heated.json is not in the points"; fail=1; }
mv "$work/bench_attention.ab" "$repo/.device/bin/bench_attention"

# The contention section on two stand-in GPUs: serial on one GPU, then lss (its three options) and
# megatron_sp with overlap on and off, each traced for 3 steps into a trace beside its JSON.
mkdir -p "$work/stub2"
printf '#!/bin/sh\necho "GPU 0: stand-in (UUID: GPU-0)"\necho "GPU 1: stand-in (UUID: GPU-1)"\n' >"$work/stub2/nvidia-smi"
chmod +x "$work/stub2/nvidia-smi"
: >"$work/calls.txt"
(cd "$repo" && PATH=$work/stub2:$PATH OUT=$work/out6 TMPDIR=$work bash scripts/gpu_perf.sh contention >"$work/run6.txt" 2>&1) ||
  { cat "$work/run6.txt"; echo "FAIL: gpu_perf.sh contention exited non-zero"; fail=1; }
runs=$(awk '{s = ""; for (i = 3; i <= NF; i++) {
              if ($i == "--strategy" || $i == "--seq" || $i == "--trace-steps") s = s " " $(i + 1)
              if ($i == "--overlap" || $i == "--no-overlap" || $i == "--distributed-optimizer") s = s " " $i
              if ($i == "--trace") s = s " " ($(i + 1) ~ /\.trace\.json$/ ? "traced" : "?") }
            print substr(s, 2)}' "$work/calls.txt" | paste -sd'|' -)
want="serial 32K 3 traced|lss --distributed-optimizer --overlap 32K 3 traced|megatron_sp --overlap 32K 3 traced"
want+="|lss --distributed-optimizer --no-overlap 32K 3 traced|megatron_sp --no-overlap 32K 3 traced"
[ "$runs" = "$want" ] || { echo "FAIL: contention runs"; echo "  got:  $runs"; echo "  want: $want"; fail=1; }

# The project section on two stand-in GPUs: per strategy a calibration run on both GPUs at 32K,
# then `lssbench project` at P = 2 (its own grid), 1, 4 and 8 with T = 16K x P, each from that
# strategy's calibration.
: >"$work/calls.txt"
(cd "$repo" && PATH=$work/stub2:$PATH OUT=$work/out7 TMPDIR=$work bash scripts/gpu_perf.sh project >"$work/run7.txt" 2>&1) ||
  { cat "$work/run7.txt"; echo "FAIL: gpu_perf.sh project exited non-zero"; fail=1; }
runs=$(awk '{s = $3; for (i = 4; i <= NF; i++) {
              if ($i == "--strategy" || $i == "--sp" || $i == "--seq") s = s " " $(i + 1)
              if ($i == "--calibration") { n = split($(i + 1), parts, "/"); s = s " " parts[n] } }
            print s}' "$work/calls.txt" | paste -sd'|' -)
want=""
for strategy in lss megatron_sp; do
  want+="${want:+|}run $strategy 2 32K"
  for np in 2 1 4 8; do want+="|project $strategy $np $((16 * np))K project_cal_${strategy}_w2_T32K.json"; done
done
[ "$runs" = "$want" ] || { echo "FAIL: project runs"; echo "  got:  $runs"; echo "  want: $want"; fail=1; }

# With LSS_PROJECT_CALIBRATIONS the calibrations are an earlier call's: no run, the projections
# at their world (2), 1, 4 and 8 from those files.
mkdir -p "$work/cals"
for strategy in lss megatron_sp; do echo '{}' >"$work/cals/project_cal_${strategy}_w2_T32K.json"; done
: >"$work/calls.txt"
(cd "$repo" && PATH=$work/stub:$PATH OUT=$work/out8 TMPDIR=$work LSS_PROJECT_CALIBRATIONS=$work/cals \
  LSS_PROJECT_ARGS="--rounds 3" LSS_PROJECT_LIMIT_S=420 bash scripts/gpu_perf.sh project >"$work/run8.txt" 2>&1) ||
  { cat "$work/run8.txt"; echo "FAIL: gpu_perf.sh project with LSS_PROJECT_CALIBRATIONS exited non-zero"; fail=1; }
runs=$(awk '{s = $3; for (i = 4; i <= NF; i++) {
              if ($i == "--strategy" || $i == "--sp" || $i == "--seq") s = s " " $(i + 1)
              if ($i == "--calibration") s = s " " $(i + 1) }
            print s}' "$work/calls.txt" | paste -sd'|' -)
want=""
for strategy in lss megatron_sp; do
  for np in 2 1 4 8; do want+="${want:+|}project $strategy $np $((16 * np))K $work/cals/project_cal_${strategy}_w2_T32K.json"; done
done
[ "$runs" = "$want" ] || { echo "FAIL: project runs from given calibrations"; echo "  got:  $runs"; echo "  want: $want"; fail=1; }
# LSS_PROJECT_ARGS reaches every projection.
[ "$(grep -c -- "--rounds 3" "$work/calls.txt")" = 8 ] || { echo "FAIL: LSS_PROJECT_ARGS not on all 8 projections"; fail=1; }
# LSS_PROJECT_LIMIT_S is every projection's limit, and only theirs.
[ "$(grep -c "^=== project_[a-z_]*_sp[0-9]*_T[0-9]*K (limit 420 s): " "$work/run8.txt")" = 8 ] ||
  { echo "FAIL: LSS_PROJECT_LIMIT_S not the limit of all 8 projections"; grep "^===" "$work/run8.txt"; fail=1; }
# A limit that is not whole seconds above 0 (timeout 0 would mean none) is refused, named, nothing run.
for bad in 0 1m; do
  : >"$work/calls.txt"
  (cd "$repo" && PATH=$work/stub:$PATH OUT=$work/out8b TMPDIR=$work LSS_PROJECT_CALIBRATIONS=$work/cals \
    LSS_PROJECT_LIMIT_S=$bad bash scripts/gpu_perf.sh project >"$work/run8b.txt" 2>&1) &&
    { echo "FAIL: LSS_PROJECT_LIMIT_S=$bad: exit 0"; fail=1; }
  expect "$work/run8b.txt" "NOT-RUN project: LSS_PROJECT_LIMIT_S=$bad: want whole seconds above 0"
  [ -s "$work/calls.txt" ] && { echo "FAIL: LSS_PROJECT_LIMIT_S=$bad: projections ran"; fail=1; }
done
# Two calibrations of one strategy: which to take is not guessed; that strategy is not run.
echo '{}' >"$work/cals/project_cal_lss_w16_T256K.json"
: >"$work/calls.txt"
(cd "$repo" && PATH=$work/stub:$PATH OUT=$work/out9 TMPDIR=$work LSS_PROJECT_CALIBRATIONS=$work/cals \
  bash scripts/gpu_perf.sh project >"$work/run9.txt" 2>&1) && { echo "FAIL: two lss calibrations: exit 0"; fail=1; }
expect "$work/run9.txt" "NOT-RUN project lss: want one project_cal_lss_w*_T*K.json"
grep -q -- "--strategy lss" "$work/calls.txt" && { echo "FAIL: two lss calibrations: lss projected anyway"; fail=1; }

# ---- 3. gpu_variant.sh's name check ----
for bad in Bad base bundle 1x ""; do
  bash "$root/scripts/gpu_variant.sh" "$bad" >"$work/variant.txt" 2>&1 && { echo "FAIL: gpu_variant.sh accepted '$bad'"; fail=1; }
  grep -q "variant name '$bad'" "$work/variant.txt" || { echo "FAIL: gpu_variant.sh '$bad': message does not name it"; cat "$work/variant.txt"; fail=1; }
done

bash "$root/scripts/gpu_variant.sh" ok1 lssbench bench_everything >"$work/variant.txt" 2>&1 &&
  { echo "FAIL: gpu_variant.sh accepted the binary 'bench_everything'"; fail=1; }
grep -q "binary 'bench_everything'" "$work/variant.txt" || { echo "FAIL: gpu_variant.sh: the bad binary is not named"; cat "$work/variant.txt"; fail=1; }

# ---- 3b. gpu_bundle.sh's size limit: above the device tool's 64 MiB, or not a number, refused first ----
for bad in 65 1x; do
  LSS_BUNDLE_LIMIT_MIB=$bad BUILD_DIR="$work/no-build" bash "$root/scripts/gpu_bundle.sh" >"$work/bundle.txt" 2>&1 &&
    { echo "FAIL: gpu_bundle.sh accepted LSS_BUNDLE_LIMIT_MIB=$bad"; fail=1; }
  grep -q "LSS_BUNDLE_LIMIT_MIB=$bad: want a whole number of MiB, at most 64" "$work/bundle.txt" ||
    { echo "FAIL: gpu_bundle.sh LSS_BUNDLE_LIMIT_MIB=$bad: message does not name it"; cat "$work/bundle.txt"; fail=1; }
done

# ---- 3c. travel_size.sh: what a device call carries, counted as a tar archive of it ----
# A repository with a tracked file, an ignored one, an ignored shared/ and a carried folder: each
# counted or left out as the device tool does; a tracked file deleted last in the listing neither
# counted nor fatal (tar stops on a path it cannot stat; the count once stopped gpu_bundle.sh there).
tr=$work/travel
mkdir -p "$tr/.device" "$tr/shared"
(cd "$tr" && git init -q && printf '/.device/\n/shared/\n*.ignored\n' >.gitignore && head -c 1000 /dev/zero >a.txt &&
  head -c 700 /dev/zero >zz-last.txt && git add .gitignore a.txt zz-last.txt) || { echo "FAIL: travel: set-up"; fail=1; }
travel() { (cd "$tr" && bash "$root/scripts/travel_size.sh" "$@" | awk '{print $1}'); }
# 512-byte header and 512-byte blocks per file; the archive itself ends in whole 10240-byte records.
base=$(travel)
[ "$base" = 10240 ] || { echo "FAIL: travel_size.sh: .gitignore, a.txt (1000 B) and zz-last.txt (700 B) as tar: want 10240, got $base"; fail=1; }
head -c 20000 /dev/zero >"$tr/big.ignored"
[ "$(travel)" = "$base" ] || { echo "FAIL: travel_size.sh counts an ignored file"; fail=1; }
head -c 20000 /dev/zero >"$tr/untracked.txt"
[ "$(travel)" -gt "$base" ] || { echo "FAIL: travel_size.sh leaves out an untracked file that is not ignored"; fail=1; }
rm "$tr/untracked.txt"
head -c 20000 /dev/zero >"$tr/shared/s.bin"
with_shared=$(travel)
[ "$with_shared" -gt "$base" ] || { echo "FAIL: travel_size.sh leaves out shared/ (ignored, but it travels)"; fail=1; }
head -c 30000 /dev/zero >"$tr/.device/bundle.bin"
[ "$(travel)" = "$with_shared" ] || { echo "FAIL: travel_size.sh counts .device uncarried"; fail=1; }
[ "$(travel .device)" -gt "$with_shared" ] || { echo "FAIL: travel_size.sh leaves out a carried folder"; fail=1; }
rm "$tr/zz-last.txt"
out_deleted=$(cd "$tr" && bash "$root/scripts/travel_size.sh" 2>&1) ||
  { echo "FAIL: travel_size.sh stops on a deleted tracked file listed last: $out_deleted"; fail=1; }

# ---- 4. gpu_run.sh's arguments ----
# An unknown argument is refused before anything runs (it once ran the whole GPU job); with
# --unpack-only it unpacks a stand-in bundle and stops, running no test or benchmark.
mkdir -p "$work/runrepo/scripts" "$work/runrepo/.device" "$work/stage/bin"
cp "$root/scripts/gpu_run.sh" "$work/runrepo/scripts/"
printf '#!/bin/sh\necho "stand-in lssbench ran" > "%s/ran.txt"\n' "$work" > "$work/stage/bin/lssbench"
chmod +x "$work/stage/bin/lssbench"
tar -C "$work/stage" -cJf "$work/runrepo/.device/bundle.tar.xz" bin
for bad in true "--unpack-only extra"; do
  # shellcheck disable=SC2086
  OUT=$work/runout bash "$work/runrepo/scripts/gpu_run.sh" $bad >"$work/run.txt" 2>&1
  rc=$?
  [ $rc -eq 2 ] || { echo "FAIL: gpu_run.sh $bad: exit $rc, not 2"; fail=1; }
  grep -qF -- "${bad%% *}" "$work/run.txt" || { echo "FAIL: gpu_run.sh $bad: the message does not name it"; cat "$work/run.txt"; fail=1; }
  [ -e "$work/runrepo/.device/bin" ] && { echo "FAIL: gpu_run.sh $bad unpacked the bundle"; fail=1; }
done
OUT=$work/runout bash "$work/runrepo/scripts/gpu_run.sh" --unpack-only >"$work/run.txt" 2>&1 ||
  { echo "FAIL: gpu_run.sh --unpack-only failed"; cat "$work/run.txt"; fail=1; }
[ -x "$work/runrepo/.device/bin/lssbench" ] || { echo "FAIL: gpu_run.sh --unpack-only did not unpack"; fail=1; }
[ -e "$work/ran.txt" ] && { echo "FAIL: gpu_run.sh --unpack-only ran something"; fail=1; }

[ $fail -eq 0 ] && echo "ab_kernel: all checks passed"
exit $fail
