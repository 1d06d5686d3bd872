#!/usr/bin/env bash
# Performance runs ON a GPU machine (issue "Performance"), from the repository root, with .device/
# (scripts/gpu_bundle.sh) carried along:
#   device tool: run(command="bash scripts/gpu_perf.sh SECTION...", carry=[".device"])
# Sections (run in the order given):
#   tests     the kernel and attention tests and the CUDA step test on every GPU (all strategies, grids, options;
#             LSS_STEP_TEST_FILTER, a gtest filter, picks cases: the whole test ran 540 s on 2 x H200, more
#             than the ~530 s a call leaves it after the kernel tests, so split it over two calls;
#             LSS_TESTS picks the binaries, default "kernels attention strategies")
#   serial    serial step, L4 C2048 H16 B1 bf16, T=16K and 64K, with the analytic bound
#   libs      the serial step at T=16K on the system's CUDA libraries and on python3's (LSS_CUDA_LIBS=python
#             makes every run use python3's), alternating, then the PyTorch eager peer
#   serial-attention  the serial step at T=16K on each attention path (cuDNN, the own flash kernels)
#   peers     peers-serial, then peers-lss
#   peers-serial  our serial step (default attention, then cuDNN's) and the PyTorch peer
#             (bench/peers/torch_step.py) serial eager and compile at T=16K, one after the other on one card
#   peers-lss our lss (zigzag) and the peer's (contiguous and zigzag) on every GPU at T=16K x GPUs
#   overlap   lss (contiguous, zigzag) and megatron_sp on every GPU at T=64K, overlap on and off
#   weak      lss zigzag and megatron_sp weak scaling 16K per GPU on 1, 2, 4 GPUs
#   bound     lss zigzag (with and without --chunk-pipeline) and megatron_sp on every GPU at T = 16K and
#             64K (LSS_BOUND_SEQ) with the three bounds (burst, sustained, contended)
#   trace     one traced step per point (lssbench run --trace; Chrome traces beside the JSON): serial on one
#             GPU at 16K per GPU and at T = 16K x GPUs, lss zigzag (defaults, and --keep-kv --placed-reduce-scatter
#             --distributed-optimizer) and megatron_sp on every GPU at T = 16K x GPUs; LSS_TRACE_POINTS picks
#             (default "serial lss lss-best megatron_sp"), LSS_TRACE_TAG prefixes the names (trace_<tag>_...),
#             LSS_TRACE_STEPS the steps traced (default 3: one step's time at the power cap varies by ~5%)
#   contention  what overlap gains and what it costs the compute beside it: 3 traced steps each of lss zigzag
#             with --keep-kv --placed-reduce-scatter --distributed-optimizer and of megatron_sp, with --overlap
#             and --no-overlap, on every GPU at T = 16K x GPUs, and of serial at that T on one GPU
#             (plots/traceplot.py on the contention_*.json points draws the breakdown; twenty-ninth session);
#             LSS_CONTENTION_ARGS are added to the lss and megatron_sp points, LSS_CONTENTION_TAG names them
#             (contention_<tag>_...; e.g. "--grad-reduce-dtype bf16" and "bf16grads")
#   split     lss zigzag with split causal blocks (the default) and with query-offset calls
#             (--no-split-causal) on every GPU at T=16K x GPUs and 64K
#   attention bench_attention (own flash kernels, both generations on H100/H200, and cuDNN; square
#             shapes, then one lss rank's calls on 4 GPUs at 16K and 64K per GPU), then
#             its PyTorch peer (bench/peers/torch_attention.py: SDPA flash and cuDNN backends) on
#             the same shapes; LSS_BENCH_FILTER (a benchmark filter) and LSS_PEER_ATTENTION_SEQ
#             (lengths, default 4K,16K,64K) pick cases (default: all but BM_AttentionHeated, which
#             attention-heat runs)
#   attention-heat  bench_attention's BM_AttentionHeated: the model's causal D = 128 calls at 16K,
#             32K and 64K, own kernels and cuDNN, forward and forward+backward, each after 3 s of heat
#             and timed ~3 s, with the card's mean power, SM clock, capped share and pJ/FLOP (NVML):
#             the sustained rates a power-capped step sees; LSS_BENCH_FILTER picks cases
#   profile   the serial step (T=16K, 2 steps, no bound) under Nsight Compute, one metric
#             (gpu__time_duration), clocks and caches left alone: every kernel's time, summed by
#             name into $OUT/profile_serial_T16K.txt (where the step's time goes beyond the bound's
#             kernels; ncu reads counters on Firecracker machines only, KINDS.md)
#   ncu-attention  bench_attention at T=16K D128 causal forward+backward, own flash kernels and cuDNN,
#             under Nsight Compute with its full section set (clocks left alone): reports
#             ncu_attention_{flash,cudnn}.ncu-rep and their details pages as text in $OUT; then one
#             launch of each own kernel (LSS_NCU_SOURCE_KERNELS, default "flash_bwd_sm90 flash_fwd_sm90";
#             LSS_NCU_SOURCE_D, default 128) with its SASS source counters: ncu_source_<kernel>.csv.xz
#             and its summary ncu_source_<kernel>.txt (scripts/ncu_sass_summary.py, also in the log)
#             in points.tar.gz
#   kernels   bench_kernels at the model's sizes (--large, bf16): GEMMs, the MLP's linear layers plain
#             and with the fused epilogues, LayerNorm forward and backward, GELU, cross-entropy
#   collectives  bench_collectives --large on every GPU: the collectives alone (nccl-tests' busbw)
#             and overlap_* (a K/V-sized all-gather or reduce-scatter with 1-8 MLP GEMMs beside it:
#             hidden share, GEMM slowdown); LSS_BENCH_FILTER picks benchmarks, and NCCL's own
#             variables (e.g. NCCL_MAX_CTAS) pass through, for A/Bs of the collectives' SM share;
#             LSS_COLLECTIVES_ARGS=--copy-engine: the all-gathers on the copy engines (symmetric windows)
#             or =--registered: every operand registered with NCCL (lssbench's --registered-gathers)
#             or ="--symmetric [--symmetric-ctas=N]": every operand in symmetric windows, on NCCL's
#             symmetric kernels (lssbench's --symmetric-collectives)
#   ab        the bundle's lssbench against a base build, $LSS_AB_BASE (e.g. bin/lssbench-<commit>
#             unpacked from .device/base.tar.xz, made with the same bundle script; or the bundle's own
#             lssbench, to compare options: LSS_AB_NEW_ARGS are added to the new side's runs, LSS_AB_BASE_ARGS
#             to the base's, e.g. an option both sides share; LSS_AB_NEW replaces the new side's binary,
#             e.g. a kernel variant's .device/NAME/lssbench, unpacked by ab-kernel earlier in the call), in one call:
#             lss zigzag and megatron_sp (LSS_AB_STRATEGIES, which must leave out a strategy that does not read an
#             option given: lssbench refuses it; serial runs on one GPU) on every GPU at T = 8K and 16K per GPU
#             (LSS_AB_SEQ_PER_GPU, in K), in the order base, new, base, new (the card's clocks drift
#             over a call); the new build's points carry the bound, the base's are timed only;
#             LSS_AB_TAG names the points (ab_<tag>_...) so that several A/Bs fit in one call;
#             LSS_AB_ITERS timed steps per run (default 6; more where the power cap's spread hides
#             a 1% change, as at T = 64K on 4 GPUs)
#   ab-kernel  kernel variants against the bundle's build on one card: each variant is .device/NAME.tar.xz
#             (scripts/gpu_variant.sh; LSS_AB_VARIANTS picks names, default every archive but the bundle),
#             and runs what it carries: its test_cuda_kernels and test_cuda_attention; bench_attention
#             forward+backward and forward alone (LSS_AB_KERNEL_PASSES, default "1 0"; LSS_AB_KERNEL_FILTER,
#             the filter before "/bwd:", default T 4K 16K 64K, D 64 128, causal and full, the own kernels);
#             bench_kernels --large (LSS_AB_KERNEL_KERNELS_FILTER, default all); the serial step at T = 16K
#             (LSS_AB_KERNEL_HEADS, default 16). Each benchmark in the order base, variants, twice (the
#             card's clocks drift over a call), the base only where a variant has the binary;
#             $OUT/ab_kernel.txt: scripts/ab_summary.py's tables; each variant's change.diff comes back
#             in the points as abk_NAME_change.diff
#   long SEQ  one training step of lss (zigzag, --recompute) on every GPU at T=SEQ, L16 C2048 H16
#             (the ~1B preset of sweeps/gpu-max-seq.json), then megatron_sp the same way;
#             LSS_LONG_STRATEGIES (default "lss megatron_sp") picks which
#   project   the projection (README, Projection) against measurements: lss (zigzag --keep-kv
#             --placed-reduce-scatter --distributed-optimizer) and megatron_sp on every GPU at T = 16K x GPUs,
#             timed with their bounds (the calibrations); then on one GPU, from each, `lssbench project` at
#             P = GPUs (its own grid: the check), P = 1 and LSS_PROJECT_SP (default "4 8"), T = 16K x P
#             (weak scaling's points); LSS_PROJECT_CALIBRATIONS=DIR takes the calibrations from an earlier
#             call's points (DIR/project_cal_<strategy>_w<P>_T<T>.json) instead of running them;
#             LSS_PROJECT_ARGS goes to every projection (e.g. "--rounds 3"); LSS_PROJECT_LIMIT_S is each
#             projection's limit (default 240 s; with "--heat 0.25 --rounds 3" one took 188 s at P = 4)
#   sweep SPEC  lssbench sweep SPEC --max-world GPUs $LSS_SWEEP_ARGS (e.g. "--min-world 4"), into
#               .gpu-keep/sweeps/<name>/, packed into $OUT/sweeps.tar.gz: .gpu-keep/ is ignored
#               by git, so it stays on the warm machine between calls, and a sweep cut at a call's
#               limit resumes in the next call (the sweep skips the points it has)
# Output in $OUT: log.txt, summary.txt (one line per point), points.tar.gz (every result JSON of this
# call: several invocations in one call, e.g. with different LSS_SWEEP_ARGS, add to the same
# points and append to the same log) and sweeps.tar.gz (every sweep folder in .gpu-keep/sweeps/), packed again after each run so
# that what finished comes back even when the call is cut at its limit. Archives, because the
# device tool returns at most 8 files, none more than two folders down.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
out=${OUT:-/tmp/lss-gpu-out}
mkdir -p "$out"
dev=$root/.device
orig_ld=${LD_LIBRARY_PATH-}
sys() { LD_LIBRARY_PATH=$orig_ld "$@"; }
[ -x "$dev/bin/lssbench" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz" || { echo "cannot unpack $dev/bundle.tar.xz"; exit 1; }
export PATH=$dev/mpich/bin:$PATH LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export NCCL_NVLS_ENABLE=0
# The CUDA libraries of the machine's python3 (PyTorch's environment): cuDNN, cuBLAS(Lt), NCCL and the
# runtime in their nvidia/*/lib folders, as colon-separated folders; empty where python3 has none.
# These can be newer than the system's (on the H200 machines cuDNN 9.19 against the system's 9.14).
python_cuda_libs() {
  sys python3 - <<'PY' 2>/dev/null
import glob, os, site
dirs = []
for sp in site.getsitepackages():
    for lib in ("libcudnn.so.9", "libcublasLt.so.13", "libnccl.so.2", "libcudart.so.13"):
        for f in sorted(glob.glob(os.path.join(sp, "nvidia", "**", lib), recursive=True)):
            if os.path.dirname(f) not in dirs:
                dirs.append(os.path.dirname(f))
print(":".join(dirs))
PY
}
# LSS_CUDA_LIBS=python: every run of ours loads those instead of the system's (machine.cudnn, .cublas,
# .nccl in the JSON say which were loaded).
if [ "${LSS_CUDA_LIBS:-system}" = python ]; then
  pylibs=$(python_cuda_libs)
  [ -n "$pylibs" ] || { echo "LSS_CUDA_LIBS=python: python3 has no nvidia/*/lib folders"; exit 1; }
  export LD_LIBRARY_PATH=$pylibs:$LD_LIBRARY_PATH
fi
gpus=$(sys nvidia-smi -L | grep -c "^GPU")
keep=$root/.gpu-keep/sweeps
# One points folder per $OUT, so that a second invocation in the same call keeps the first's. A
# call's first invocation ($OUT has no points.tar.gz yet) starts it empty: on a machine still warm
# from the last call, /tmp holds that call's points, which it already brought back.
res=${TMPDIR:-/tmp}/lss-points-$(printf '%s' "$out" | cksum | cut -d' ' -f1)/points
[ -f "$out/points.tar.gz" ] || rm -rf "$res"
mkdir -p "$res"
pack() {
  tar -C "$(dirname "$res")" -czf "$out/points.tar.gz.tmp" points && mv "$out/points.tar.gz.tmp" "$out/points.tar.gz"
  [ -d "$keep" ] && tar -C "$(dirname "$keep")" -czf "$out/sweeps.tar.gz.tmp" sweeps && mv "$out/sweeps.tar.gz.tmp" "$out/sweeps.tar.gz"
}
budget=${LSS_TIME_BUDGET_S:-570}
model="--layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda"
failed=0

step() {  # NAME LIMIT COMMAND...
  local name=$1 limit=$2 left=$((budget - SECONDS))
  shift 2
  if ((left < 15)); then echo ">>> NOT-RUN $name (time budget used up)"; failed=1; return; fi
  ((limit > left)) && limit=$left
  echo "=== $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo ">>> rc=$rc $name"
  pack
  [ $rc -eq 0 ] || [ $rc -eq 77 ] || failed=1
}
point() {  # NAME NPROC LIMIT lssbench-run-args...
  local name=$1 np=$2 limit=$3
  shift 3
  step "$name" "$limit" mpiexec.hydra -n "$np" "$dev/bin/lssbench" run $model --out "$res/$name.json" "$@"
}
peer() {  # NAME NPROC LIMIT torch_step-args...
  local name=$1 np=$2 limit=$3
  shift 3
  # The machine's own library path: the carried libraries are for our binaries only.
  if [ "$np" = 1 ]; then step "$name" "$limit" env LD_LIBRARY_PATH="$orig_ld" python3 bench/peers/torch_step.py --out "$res/$name.json" "$@"
  else step "$name" "$limit" env LD_LIBRARY_PATH="$orig_ld" torchrun --standalone --nproc-per-node "$np" bench/peers/torch_step.py --out "$res/$name.json" "$@"; fi
}

run_section() {
  case $1 in
    tests)
      local tests=" ${LSS_TESTS:-kernels attention strategies} "
      [[ $tests == *" kernels "* ]] && step test_cuda_kernels 120 "$dev/bin/test_cuda_kernels" --gtest_brief=1
      [[ $tests == *" attention "* ]] && step test_cuda_attention 120 "$dev/bin/test_cuda_attention" --gtest_brief=1
      [[ $tests == *" strategies "* ]] && step test_strategies_cuda 560 mpiexec.hydra -n "$gpus" "$dev/bin/test_strategies_cuda" \
        --gtest_brief=1 --gtest_filter="${LSS_STEP_TEST_FILTER:-*}"
      return 0 ;;
    serial)
      point serial_T16K 1 120 --strategy serial --seq 16K --warmup 3 --iters 10
      point serial_T64K 1 120 --strategy serial --seq 64K --warmup 2 --iters 5 ;;
    libs)
      # The serial step on the system's CUDA libraries and on python3's (python_cuda_libs), alternating,
      # then the PyTorch eager peer (which loads python3's) in the same call.
      local pylibs round
      pylibs=$(python_cuda_libs)
      if [ -z "$pylibs" ]; then echo ">>> NOT-RUN libs: python3 has no nvidia/*/lib folders"; failed=1; return; fi
      echo "python3's CUDA libraries: $pylibs"; ls ${pylibs//:/ } 2>/dev/null | grep -E '^lib(cudnn|cublas|nccl|cudart)[^_]*\.so' | sort -u | tr '\n' ' '; echo
      for round in 1 2; do
        point serial_system_libs${round}_T16K 1 120 --strategy serial --seq 16K --warmup 3 --iters 10
        step serial_python_libs${round}_T16K 120 env LD_LIBRARY_PATH="$pylibs:$LD_LIBRARY_PATH" mpiexec.hydra -n 1 "$dev/bin/lssbench" run $model \
          --out "$res/serial_python_libs${round}_T16K.json" --strategy serial --seq 16K --warmup 3 --iters 10
      done
      peer peer_serial_eager_T16K 1 150 --strategy serial --mode eager --seq 16K ;;
    serial-attention)
      point serial_cudnn_T16K 1 120 --strategy serial --seq 16K --attention cudnn --warmup 3 --iters 10
      point serial_flash_T16K 1 120 --strategy serial --seq 16K --attention flash --warmup 3 --iters 10 ;;
    peers) run_section peers-serial; run_section peers-lss ;;
    peers-serial)
      # Our serial step in the same call, so that the ratio compares one card with itself: on the
      # default attention path (auto: the own kernels at D = 64 and 128 on H100/H200) and on cuDNN.
      point serial_beside_peer_T16K 1 120 --strategy serial --seq 16K --warmup 3 --iters 10
      point serial_cudnn_beside_peer_T16K 1 120 --strategy serial --seq 16K --attention cudnn --warmup 3 --iters 10
      peer peer_serial_eager_T16K 1 150 --strategy serial --mode eager --seq 16K
      peer peer_serial_compile_T16K 1 240 --strategy serial --mode compile --seq 16K ;;
    peers-lss)
      local T=$((16 * gpus))K
      point lss_zigzag_w${gpus}_T$T "$gpus" 120 --strategy lss --sp "$gpus" --zigzag --seq "$T" --warmup 2 --iters 6
      peer peer_lss_eager_w${gpus}_T$T "$gpus" 200 --strategy lss --mode eager --seq "$T"
      peer peer_lss_zigzag_eager_w${gpus}_T$T "$gpus" 200 --strategy lss --zigzag --mode eager --seq "$T" ;;
    overlap)
      for o in overlap no-overlap; do
        point lss_contig_${o}_w${gpus}_T64K "$gpus" 120 --strategy lss --sp "$gpus" --$o --seq 64K --warmup 2 --iters 6
        point lss_zigzag_${o}_w${gpus}_T64K "$gpus" 120 --strategy lss --sp "$gpus" --zigzag --$o --seq 64K --warmup 2 --iters 6
        point megatron_sp_${o}_w${gpus}_T64K "$gpus" 120 --strategy megatron_sp --sp "$gpus" --$o --seq 64K --warmup 2 --iters 6
      done ;;
    ab)
      if [ ! -x "${LSS_AB_BASE:-}" ]; then echo ">>> NOT-RUN ab: LSS_AB_BASE (the base lssbench) is not executable"; failed=1; return; fi
      if [ ! -x "${LSS_AB_NEW:-$dev/bin/lssbench}" ]; then echo ">>> NOT-RUN ab: LSS_AB_NEW (the new side's lssbench) is not executable"; failed=1; return; fi
      local T t round side exe strategy np
      for t in ${LSS_AB_SEQ_PER_GPU:-8 16}; do
        for strategy in ${LSS_AB_STRATEGIES:-lss megatron_sp}; do
          np=$gpus
          [ "$strategy" = serial ] && np=1  # the serial step: one GPU, T = the per-GPU length
          T=$((t * np))K
          for round in 1 2; do
            for side in base new; do
              local args=(--strategy "$strategy" --seq "$T" --warmup 2 --iters "${LSS_AB_ITERS:-6}")
              [ "$strategy" = serial ] || args+=(--sp "$np")
              [ "$strategy" = lss ] && args+=(--zigzag)
              exe=${LSS_AB_NEW:-$dev/bin/lssbench}
              if [ "$side" = base ]; then exe=$LSS_AB_BASE; args+=(--no-bound ${LSS_AB_BASE_ARGS:-}); else args+=(${LSS_AB_NEW_ARGS:-}); fi
              step "ab${LSS_AB_TAG:+_$LSS_AB_TAG}_${strategy}_${side}${round}_w${np}_T$T" 120 mpiexec.hydra -n "$np" "$exe" run $model \
                --out "$res/ab${LSS_AB_TAG:+_$LSS_AB_TAG}_${strategy}_${side}${round}_w${np}_T$T.json" "${args[@]}"
            done
          done
        done
      done ;;
    ab-kernel)
      local variants=() v f
      for f in "$dev"/*.tar.xz; do
        [ -f "$f" ] || continue
        v=$(basename "$f" .tar.xz)
        [ "$v" = bundle ] || variants+=("$v")
      done
      [ -n "${LSS_AB_VARIANTS:-}" ] && read -ra variants <<<"$LSS_AB_VARIANTS"
      if ((${#variants[@]} == 0)); then
        echo ">>> NOT-RUN ab-kernel: no variant archive in .device (scripts/gpu_variant.sh NAME makes one)"; failed=1; return
      fi
      local t
      for v in "${variants[@]}"; do
        # Unpacked again whenever the archive is newer than the last unpacking (a rebuilt variant).
        if [ ! -f "$dev/$v/.unpacked" ] || [ "$dev/$v.tar.xz" -nt "$dev/$v/.unpacked" ]; then
          rm -rf "${dev:?}/$v" && mkdir -p "$dev/$v" && tar -C "$dev/$v" -xJf "$dev/$v.tar.xz" && touch "$dev/$v/.unpacked" ||
            { echo ">>> NOT-RUN ab-kernel: cannot unpack $dev/$v.tar.xz"; failed=1; return; }
        fi
        [ -f "$dev/$v/change.diff" ] && cp "$dev/$v/change.diff" "$res/abk_${v}_change.diff"
        for t in test_cuda_kernels test_cuda_attention; do
          [ -x "$dev/$v/$t" ] && step abk_${t}_$v 150 "$dev/$v/$t" --gtest_brief=1
        done
      done
      # Each benchmark on the base and on the variants that carry its binary, alternating, twice;
      # none where no variant carries it. In ARGS, {exe} is the side's binary, {json} its result.
      ab_rounds() {  # BINARY TAG LIMIT ARGS...
        local bin=$1 tag=$2 limit=$3 round side exe w carried=
        shift 3
        for w in "${variants[@]}"; do [ -x "$dev/$w/$bin" ] && carried=1; done
        [ -n "$carried" ] || return 0
        for round in 1 2; do
          for side in base "${variants[@]}"; do
            exe=$dev/$side/$bin
            [ "$side" = base ] && exe=$dev/bin/$bin
            [ -x "$exe" ] || continue
            local json=$res/abk_${tag}_${side}_r$round.json cmd=("$@")
            cmd=("${cmd[@]//\{exe\}/$exe}")
            step abk_${tag}_${side}_r$round "$limit" "${cmd[@]//\{json\}/$json}"
          done
        done
      }
      local bwd H
      for bwd in ${LSS_AB_KERNEL_PASSES:-1 0}; do
        ab_rounds bench_attention attention_bwd$bwd 120 {exe} --benchmark_out_format=json --benchmark_out={json} \
          --benchmark_filter="${LSS_AB_KERNEL_FILTER:-BM_Attention/T:(4096|16384|65536)/D:(64|128)/causal:(0|1)/path:0}/bwd:$bwd"
      done
      ab_rounds bench_kernels kernels 120 {exe} --backend=cuda --large --benchmark_out_format=json --benchmark_out={json} \
        --benchmark_filter="${LSS_AB_KERNEL_KERNELS_FILTER:-.}"
      for H in ${LSS_AB_KERNEL_HEADS:-16}; do
        ab_rounds lssbench serial_h$H 100 mpiexec.hydra -n 1 {exe} run ${model/--heads 16/--heads $H} \
          --strategy serial --seq 16K --warmup 3 --iters 10 --no-bound --out {json}
      done
      local args=() files side
      for side in base "${variants[@]}"; do
        files=$(find "$res" -maxdepth 1 -name "abk_*_${side}_r[12].json" | sort | paste -sd, -)
        [ -n "$files" ] && args+=("$side=$files")
      done
      if [ "${#args[@]}" -ge 2 ] && [[ ${args[0]} == base=* ]]; then
        sys python3 "$root/scripts/ab_summary.py" "${args[@]}" | tee "$out/ab_kernel.txt"
      else
        echo ">>> ab-kernel: no tables (the base or every variant has no result)"; failed=1
      fi ;;
    weak)
      for w in 1 2 4; do
        ((w > gpus)) && continue
        point lss_zigzag_weak_w${w}_T$((16 * w))K "$w" 120 --strategy lss --sp "$w" --zigzag --seq $((16 * w))K --warmup 2 --iters 6
        point megatron_sp_weak_w${w}_T$((16 * w))K "$w" 120 --strategy megatron_sp --sp "$w" --seq $((16 * w))K --warmup 2 --iters 6
      done ;;
    bound)
      for T in ${LSS_BOUND_SEQ:-16K 64K}; do
        point lss_zigzag_w${gpus}_T$T "$gpus" 150 --strategy lss --sp "$gpus" --zigzag --seq "$T" --warmup 2 --iters 6
        point lss_zigzag_pipeline_w${gpus}_T$T "$gpus" 150 --strategy lss --sp "$gpus" --zigzag --chunk-pipeline --seq "$T" --warmup 2 --iters 6
        point megatron_sp_w${gpus}_T$T "$gpus" 150 --strategy megatron_sp --sp "$gpus" --seq "$T" --warmup 2 --iters 6
      done ;;
    trace)
      # Each point's traced step (lssbench run --trace) beside its JSON: serial on one GPU at 16K
      # per GPU and at the group's T, lss (defaults, and its three options) and megatron_sp on every GPU.
      local T=$((16 * gpus))K tag=${LSS_TRACE_TAG:+${LSS_TRACE_TAG}_} pts=" ${LSS_TRACE_POINTS:-serial lss lss-best megatron_sp} "
      local best="--keep-kv --placed-reduce-scatter --distributed-optimizer"
      if [[ $pts == *" serial "* ]]; then
        for t in $(printf "%s\n" 16K "$T" | sort -u); do
          point trace_${tag}serial_w1_T$t 1 150 --strategy serial --seq "$t" --warmup 2 --iters 6 \
            --trace-steps "${LSS_TRACE_STEPS:-3}" --trace "$res/trace_${tag}serial_w1_T$t.trace.json"
        done
      fi
      if ((gpus > 1)); then
        [[ $pts == *" lss "* ]] && point trace_${tag}lss_w${gpus}_T$T "$gpus" 150 --strategy lss --sp "$gpus" --zigzag \
          --seq "$T" --warmup 2 --iters 6 --trace-steps "${LSS_TRACE_STEPS:-3}" --trace "$res/trace_${tag}lss_w${gpus}_T$T.trace.json"
        [[ $pts == *" lss-best "* ]] && point trace_${tag}lss_best_w${gpus}_T$T "$gpus" 150 --strategy lss --sp "$gpus" \
          --zigzag $best --seq "$T" --warmup 2 --iters 6 --trace-steps "${LSS_TRACE_STEPS:-3}" --trace "$res/trace_${tag}lss_best_w${gpus}_T$T.trace.json"
        [[ $pts == *" megatron_sp "* ]] && point trace_${tag}megatron_sp_w${gpus}_T$T "$gpus" 150 --strategy megatron_sp \
          --sp "$gpus" --seq "$T" --warmup 2 --iters 6 --trace-steps "${LSS_TRACE_STEPS:-3}" --trace "$res/trace_${tag}megatron_sp_w${gpus}_T$T.trace.json"
      fi ;;
    contention)
      local T=$((16 * gpus))K best="--keep-kv --placed-reduce-scatter --distributed-optimizer" o n
      local traced=(--warmup 2 --iters 6 --no-bound --trace-steps 3) tag=contention${LSS_CONTENTION_TAG:+_$LSS_CONTENTION_TAG}
      point ${tag}_serial_w1_T$T 1 200 --strategy serial --seq "$T" "${traced[@]}" --trace "$res/${tag}_serial_w1_T$T.trace.json"
      if ((gpus > 1)); then
        for o in overlap no-overlap; do
          n=${tag}_lss_best_${o}_w${gpus}_T$T
          point "$n" "$gpus" 150 --strategy lss --sp "$gpus" --zigzag $best --$o ${LSS_CONTENTION_ARGS:-} \
            --seq "$T" "${traced[@]}" --trace "$res/$n.trace.json"
          n=${tag}_megatron_sp_${o}_w${gpus}_T$T
          point "$n" "$gpus" 150 --strategy megatron_sp --sp "$gpus" --$o ${LSS_CONTENTION_ARGS:-} \
            --seq "$T" "${traced[@]}" --trace "$res/$n.trace.json"
        done
      fi ;;
    split)
      for T in $(printf "%s\n" $((16 * gpus))K 64K | sort -u); do
        point lss_zigzag_offset_w${gpus}_T$T "$gpus" 120 --strategy lss --sp "$gpus" --zigzag --no-split-causal --seq "$T" --warmup 2 --iters 6
        point lss_zigzag_split_w${gpus}_T$T "$gpus" 120 --strategy lss --sp "$gpus" --zigzag --split-causal --seq "$T" --warmup 2 --iters 6
      done ;;
    attention)
      step bench_attention 240 "$dev/bin/bench_attention" --benchmark_out="$res/bench_attention.json" --benchmark_out_format=json \
        --benchmark_filter="${LSS_BENCH_FILTER:--BM_AttentionHeated}"
      step peer_attention 240 env LD_LIBRARY_PATH="$orig_ld" python3 bench/peers/torch_attention.py \
        --seq "${LSS_PEER_ATTENTION_SEQ:-4K,16K,64K}" --out "$res/peer_attention.json" ;;
    attention-heat)
      # 12 cases of ~3 s heat and ~3 s timed, with their setup (64K: ~1.6 GB of operands filled from the host).
      step bench_attention_heated 200 "$dev/bin/bench_attention" --benchmark_out="$res/bench_attention_heated.json" \
        --benchmark_out_format=json --benchmark_filter="${LSS_BENCH_FILTER:-BM_AttentionHeated}" ;;
    profile)
      local csv=$res/ncu_serial_T16K.csv
      step ncu_serial_T16K 300 mpiexec.hydra -n 1 ncu --clock-control none --cache-control none \
        --metrics gpu__time_duration.sum --csv --print-units base --log-file "$csv" \
        "$dev/bin/lssbench" run $model --strategy serial --seq 16K --warmup 1 --iters 1 --no-bound --no-measure-peak \
        --out "$res/ncu_serial_T16K.json"
      sys python3 - "$csv" 2 <<'PY' | tee "$out/profile_serial_T16K.txt"
import csv, collections, sys
rows = list(csv.reader(open(sys.argv[1], errors="replace")))
head = next((i for i, r in enumerate(rows) if "Kernel Name" in r and "Metric Value" in r), None)
if head is None:
    sys.exit(f"{sys.argv[1]}: no ncu CSV header (ncu failed?)")
h = rows[head]
name_col, value_col = h.index("Kernel Name"), h.index("Metric Value")
per = collections.defaultdict(lambda: [0, 0.0])
for r in rows[head + 1:]:
    if len(r) <= max(name_col, value_col):
        continue
    try:
        ns = float(r[value_col].replace(",", ""))
    except ValueError:
        continue
    k = per[r[name_col][:90]]
    k[0] += 1
    k[1] += ns
steps = int(sys.argv[2])
total = sum(v[1] for v in per.values())
print(f"kernel time per step {total / steps / 1e6:.2f} ms over {sum(v[0] for v in per.values())} launches in {steps} steps")
print(f"{'ms/step':>9} {'calls/step':>10}  kernel")
for name, (n, ns) in sorted(per.items(), key=lambda kv: -kv[1][1])[:40]:
    print(f"{ns / steps / 1e6:9.3f} {n / steps:10.1f}  {name}")
PY
      ;;
    ncu-attention)
      # path id of bench_attention, then the kernels to profile (the warm-up step and one timed step)
      local name id kernels
      for name in flash cudnn; do
        if [ $name = flash ]; then id=0 kernels=regex:flash_; else id=1 kernels=regex:.; fi
        step ncu_attention_$name 240 ncu --clock-control none --set full -k "$kernels" --launch-count 12 \
          -f -o "$out/ncu_attention_$name" "$dev/bin/bench_attention" --benchmark_min_time=0.001 \
          --benchmark_filter="BM_Attention/T:16384/D:128/causal:1/path:$id/bwd:1"
        ncu --import "$out/ncu_attention_$name.ncu-rep" --page details >"$out/ncu_attention_$name.txt" 2>&1
      done
      # Per-instruction source counters of one launch of each own kernel (after the warm-up one):
      # the SASS with its warp-state samples and execution counts, and their summary
      # (scripts/ncu_sass_summary.py: stalls by reason and opcode, the hot loop's instruction mix).
      local k
      for k in ${LSS_NCU_SOURCE_KERNELS:-flash_bwd_sm90 flash_fwd_sm90}; do
        step ncu_source_$k 120 ncu --clock-control none --set full --import-source yes -k "regex:$k" --launch-skip 1 \
          --launch-count 1 -f -o "$res/ncu_source_$k" "$dev/bin/bench_attention" --benchmark_min_time=0.001 \
          --benchmark_filter="BM_Attention/T:16384/D:${LSS_NCU_SOURCE_D:-128}/causal:1/path:0/bwd:1"
        ncu --import "$res/ncu_source_$k.ncu-rep" --page source --csv --print-source sass >"$res/ncu_source_$k.csv" 2>&1 &&
          sys python3 scripts/ncu_sass_summary.py "$res/ncu_source_$k.csv" 2>&1 | tee "$res/ncu_source_$k.txt"
        rm -f "$res/ncu_source_$k.ncu-rep"
        [ -f "$res/ncu_source_$k.csv" ] && xz -f "$res/ncu_source_$k.csv"
        pack
      done ;;
    kernels)
      step bench_kernels 150 "$dev/bin/bench_kernels" --backend=cuda --dtype=bf16 --large --benchmark_min_time=0.2 \
        --benchmark_filter='gemm|linear|layernorm|gelu|cross' --benchmark_out="$res/bench_kernels.json" --benchmark_out_format=json ;;
    collectives)
      local tag=${NCCL_MAX_CTAS:+_max_ctas$NCCL_MAX_CTAS}
      [[ " ${LSS_COLLECTIVES_ARGS:-} " == *" --copy-engine "* ]] && tag+=_copy_engine
      [[ " ${LSS_COLLECTIVES_ARGS:-} " == *" --registered "* ]] && tag+=_registered
      [[ " ${LSS_COLLECTIVES_ARGS:-} " == *" --symmetric "* ]] && tag+=_symmetric
      [[ ${LSS_COLLECTIVES_ARGS:-} =~ --symmetric-ctas=([0-9]+) ]] && tag+=_ctas${BASH_REMATCH[1]}
      step bench_collectives$tag 300 mpiexec.hydra -n "$gpus" "$dev/bin/bench_collectives" --backend=cuda --large ${LSS_COLLECTIVES_ARGS:-} \
        --benchmark_filter="${LSS_BENCH_FILTER:-.}" --benchmark_out="$res/bench_collectives_w$gpus$tag.json" \
        --benchmark_out_format=json ;;
    project)
      local strategy sargs cal np calw limit=${LSS_PROJECT_LIMIT_S:-240}
      if ! [[ $limit =~ ^[1-9][0-9]*$ ]]; then
        echo ">>> NOT-RUN project: LSS_PROJECT_LIMIT_S=$limit: want whole seconds above 0"; failed=1; return
      fi
      for strategy in lss megatron_sp; do
        sargs="--strategy $strategy"
        [ "$strategy" = lss ] && sargs+=" --zigzag --keep-kv --placed-reduce-scatter --distributed-optimizer"
        if [ -n "${LSS_PROJECT_CALIBRATIONS:-}" ]; then
          local found=("$LSS_PROJECT_CALIBRATIONS"/project_cal_${strategy}_w*_T*K.json)
          if [ ! -f "${found[0]}" ] || ((${#found[@]} != 1)); then
            echo ">>> NOT-RUN project $strategy: want one project_cal_${strategy}_w*_T*K.json in $LSS_PROJECT_CALIBRATIONS, found ${#found[@]}"
            failed=1; continue
          fi
          cal=${found[0]}
          calw=$(basename "$cal" | sed -E 's/.*_w([0-9]+)_T.*/\1/')
        else
          calw=$gpus
          cal=$res/project_cal_${strategy}_w${gpus}_T$((16 * gpus))K.json
          point "$(basename "$cal" .json)" "$gpus" 180 $sargs --sp "$gpus" --seq $((16 * gpus))K --warmup 2 --iters 8
          [ -f "$cal" ] || { echo ">>> NOT-RUN project $strategy: its calibration run wrote no result"; failed=1; continue; }
        fi
        for np in $(printf '%s\n' "$calw" 1 ${LSS_PROJECT_SP:-4 8} | awk '!seen[$0]++'); do
          step project_${strategy}_sp${np}_T$((16 * np))K "$limit" "$dev/bin/lssbench" project $model $sargs --sp "$np" \
            --seq $((16 * np))K --calibration "$cal" ${LSS_PROJECT_ARGS:-} --out "$res/project_${strategy}_sp${np}_T$((16 * np))K.json"
        done
      done ;;
    sweep)
      ln -sf mpiexec.hydra "$dev/mpich/bin/mpiexec"  # the sweep launches `mpiexec`
      local name
      name=$(basename "$2" .json)
      mkdir -p "$keep"
      step "sweep $2" 580 "$dev/bin/lssbench" sweep "$2" --max-world "$gpus" ${LSS_SWEEP_ARGS:-} --out "$keep/$name" ;;
    long)
      local big="--layers 16 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda --recompute --seq $2 --warmup 0 --iters 1 --no-measure-peak"
      local s order
      for s in ${LSS_LONG_STRATEGIES:-lss megatron_sp}; do
        order=; [ "$s" = lss ] && order=--zigzag  # lss in its balanced order
        step ${s}_long_w${gpus}_T$2 590 mpiexec.hydra -n "$gpus" "$dev/bin/lssbench" run $big --strategy "$s" --sp "$gpus" $order --out "$res/${s}_long_w${gpus}_T$2.json"
      done ;;
    *) echo "unknown section $1"; failed=1 ;;
  esac
}

{
  echo "GPUs: $gpus"; sys nvidia-smi -L
  while [ $# -gt 0 ]; do
    case $1 in sweep | long) run_section "$1" "$2"; shift 2 ;; *) run_section "$1"; shift ;; esac
  done
  echo "=== summary"
  sys python3 - "$res" <<'PY' | tee "$out/summary.txt"
import json, pathlib, sys
rows = []
def clocks(t):  # the lowest median SM clock over the ranks and its power-cap share
    ds = [d for d in ((t or {}).get("device_state") or {}).get("per_rank", []) if d]
    if not ds:
        return ""
    d = min(ds, key=lambda d: d["sm_clock_mhz_median"])
    return f" sm {d['sm_clock_mhz_median']:.0f}/{d['sm_clock_mhz_max']:.0f} MHz cap {d['power_capped_fraction']:.2f}"
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    try:
        j = json.loads(f.read_text())
    except Exception as e:
        print(f"{f.name}: unreadable ({e})"); continue
    if j.get("schema") == "lssbench-peer/1":
        print(f"{f.stem:<40} peer {j.get('status')} step {j.get('step_ms', {}).get('median', 0):9.2f} ms "
              f"{j.get('tflops_per_gpu') or 0:7.1f} TFLOP/s/GPU  mem {(j.get('peak_memory_bytes') or 0) / 2**30:6.2f} GiB  {j.get('device')}"
              f"{clocks(j)}")
        continue
    if j.get("schema") == "lssbench-peer-attention/1":
        for r in j.get("rows", []):
            what = f"{r['backend']} {r['pass']} {'causal' if r['causal'] else 'full'} D{r['D']} T{r['T']}"
            print(f"peer_attention {what:<40} {r.get('median_ms', 0):9.3f} ms {r.get('tflops', 0):7.1f} TFLOP/s {r.get('error', '')}")
        continue
    if "benchmarks" in j and f.stem.startswith("bench_attention"):
        for r in j["benchmarks"]:
            card = "".join(f" {r[k]:7.{d}f} {k}" for k, d in (("W", 0), ("MHz", 0), ("capped", 2), ("pJ/FLOP", 3)) if k in r)
            print(f"bench_attention {r.get('label', r['name']):<60} {r.get('real_time', 0):9.3f} ms "
                  f"{r.get('TFLOP/s') or 0:7.1f} TFLOP/s{card} {r.get('error_message', '')}")
        continue
    if j.get("schema") == "lssbench-projection":
        p, g = j["projection"], j["grid"]
        step = f"step {p['step_ms']:9.2f} ms {p['step_tflops_per_gpu']:7.1f} TFLOP/s/GPU " if p.get("step_ms") else ""
        print(f"{f.stem:<40} projection world {g['world']} = dp {g['dp']} x sp {g['sp']}: {step}"
              f"bound {p['bound_ms']:9.2f} ms {p['bound_tflops_per_gpu']:7.1f} TFLOP/s/GPU "
              f"exposed comm {p['slowest']['comm_exposed_ms']:7.2f} ms")
        continue
    if "timing" not in j:
        continue
    t, m, b = j["timing"], j["metrics"], j.get("bound") or {}
    print(f"{f.stem:<40} {j.get('status'):<6} step {t['median_ms']:9.2f} ms {m['tflops_per_gpu']:7.1f} TFLOP/s/GPU "
          f"mfu_meas {m.get('mfu_measured') or 0:5.3f} comm {t['comm_median_ms']:7.2f} exposed {t.get('comm_exposed_median_ms', 0):7.2f} "
          f"bound {b.get('bound_ms', 0):8.2f} ratio {b.get('step_over_bound', 0):5.3f} sustained {b.get('step_over_sustained_bound') or 0:5.3f} contended {b.get('step_over_contended_bound') or 0:5.3f} "
          f"mem {m['peak_mem_bytes'] / 2**30:6.2f} GiB "
          f"comm=model {j['comm']['matches_model']}{clocks(t)}"
          + (f" {m['energy_j_per_step']:.1f} J/step" if "energy_j_per_step" in m else ""))
PY
  # The group runs in a subshell (it is piped into tee), so its failures leave through its status.
  exit $failed
} 2>&1 | tee -a "$out/log.txt"
exit "${PIPESTATUS[0]}"
