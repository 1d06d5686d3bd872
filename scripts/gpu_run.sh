#!/usr/bin/env bash
# Runs the GPU checks and a few benchmark points ON the GPU machine, from the repository root, with
# .device/ (made here by scripts/gpu_bundle.sh) carried along:
#   device tool: run(command="bash scripts/gpu_run.sh", carry=[".device"])
#
# Steps: unpack .device/bundle.tar.xz; print the GPUs and the libraries a run loads; the CUDA tests
# (test_cuda_kernels, test_cuda_attention if present, test_strategies_cuda under mpiexec.hydra on
# 1, 2 and 4 ranks as far as there are GPUs); then `lssbench run --backend cuda` in bf16 at
# L=4 C=2048 H=16 B=1: serial at T=16K, and lss / megatron_sp on 2 and 4 GPUs at T=16K and 64K.
# A failing step is recorded and the next one runs; the exit status is 1 if any step failed.
#
# Output, in $OUT (the folder that comes back; /tmp/lss-gpu-out when OUT is unset):
#   log.txt          everything printed
#   summary.txt      the step outcomes and one line per benchmark point
#   results.tar.gz   results/<point>.json, the result JSON of every benchmark point
#
# Knobs (environment): LSS_GPUS (GPU count instead of nvidia-smi's), LSS_BACKEND [cuda],
# LSS_DTYPE [bf16], LSS_ATTENTION [auto], LSS_MODEL [--layers 4 --width 2048 --heads 16 --batch 1],
# LSS_STEPS [--warmup 3 --iters 10], LSS_SERIAL_SEQ [16K], LSS_SEQS [16K 64K],
# LSS_TIME_BUDGET_S [540: the device tool stops a command at 600 s], LSS_TEST_LIMIT_S [180],
# LSS_BENCH_LIMIT_S [150] (per step).
#
# Arguments: none runs all of the above; --unpack-only unpacks .device and stops, for a command that
# then runs lssbench or scripts/gpu_perf.sh itself. Anything else is refused (exit 2): an argument
# this script used to ignore ran the whole job, ~600 s of device time (thirty-first session).
set -u

unpack_only=0
case "${1-}" in
  "") ;;
  --unpack-only)
    unpack_only=1
    if [ $# -ne 1 ]; then echo "gpu_run.sh: --unpack-only takes nothing after it (given: $*)" >&2; exit 2; fi ;;
  *) echo "gpu_run.sh: unknown argument '$1' (none: the whole GPU job; --unpack-only: unpack .device and stop)" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
out=${OUT:-/tmp/lss-gpu-out}
mkdir -p "$out" || { echo "gpu_run.sh: cannot create $out" >&2; exit 1; }
dev=$root/.device
work=$(mktemp -d "${TMPDIR:-/tmp}/lss-gpu-run.XXXXXX") || exit 1
results=$work/results
steps_file=$work/steps.tsv
mkdir -p "$results"
: >"$steps_file"

# System tools (nvidia-smi, python3) run with the machine's own library path: the carried
# libraries are older builds of some system libraries and are meant for our binaries only.
orig_ld=${LD_LIBRARY_PATH-}
sys() { LD_LIBRARY_PATH=$orig_ld "$@"; }

budget=${LSS_TIME_BUDGET_S:-540}
test_limit=${LSS_TEST_LIMIT_S:-180}
bench_limit=${LSS_BENCH_LIMIT_S:-150}
failed=0

record() {  # STATUS NAME SECONDS DETAIL
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$steps_file"
  echo ">>> $1: $2 (${3}s)${4:+ - $4}"
  case $1 in PASS | SKIP) ;; *) failed=1 ;; esac
}

step() {  # NAME LIMIT_S COMMAND...: runs it under a time limit and records the outcome
  local name=$1 limit=$2
  shift 2
  local left=$((budget - SECONDS))
  if ((left < 20)); then
    record "NOT-RUN" "$name" 0 "time budget of ${budget}s used up"
    return
  fi
  ((limit > left)) && limit=$left
  echo
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS rc
  timeout --kill-after=15 "$limit" "$@"
  rc=$?
  local secs=$((SECONDS - t0))
  case $rc in
    0) record PASS "$name" "$secs" "" ;;
    77) record SKIP "$name" "$secs" "exit 77: the test found nothing to run on" ;;
    124 | 137) record FAIL "$name" "$secs" "timed out after ${limit}s" ;;
    *) record FAIL "$name" "$secs" "exit $rc" ;;
  esac
}

unpack() {
  if [[ ! -f $dev/bundle.tar.xz ]]; then
    [[ -x $dev/bin/lssbench ]] && return 0
    echo "gpu_run.sh: $dev/bundle.tar.xz not found: run scripts/gpu_bundle.sh here first and carry .device" >&2
    return 1
  fi
  rm -rf "${dev:?}/bin" "${dev:?}/lib" "${dev:?}/mpich"
  if command -v xz >/dev/null; then
    tar -C "$dev" -xJf "$dev/bundle.tar.xz"
  else
    sys python3 - "$dev/bundle.tar.xz" "$dev" <<'PY'
import sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    try:
        t.extractall(sys.argv[2], filter="tar")
    except TypeError:  # Python without extraction filters
        t.extractall(sys.argv[2])
PY
  fi
}

if ((unpack_only)); then
  unpack || exit 1
  echo "gpu_run.sh: unpacked $dev/bundle.tar.xz; for a direct run: export PATH=$dev/mpich/bin:\$PATH LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib:\$LD_LIBRARY_PATH NCCL_NVLS_ENABLE=0"
  exit 0
fi

summarize() {  # writes $out/summary.txt from the step records and the result JSONs
  sys python3 - "$results" "$steps_file" "$out/summary.txt" "$work/gpus.txt" <<'PY'
import json, pathlib, sys

res_dir, steps_file, out_file, gpus_file = map(pathlib.Path, sys.argv[1:5])
lines = []
gpus = gpus_file.read_text().strip().splitlines() if gpus_file.exists() else []
lines.append(f"GPUs ({len(gpus)}): " + ("; ".join(g.split(" (UUID")[0] for g in gpus) or "none found"))

runs, versions = [], None
for f in sorted(res_dir.glob("*.json")):
    try:
        j = json.loads(f.read_text())
        m, t, g, c = j.get("metrics", {}), j.get("timing", {}), j.get("grid", {}), j.get("config", {})
        mem = m.get("device_peak_mem_bytes") or m.get("peak_mem_bytes") or 0
        runs.append(dict(name=f.stem, strategy=j.get("strategy", "?"), gpus=g.get("world", 0), sp=g.get("sp", 0),
                         T=c.get("seq", 0), ms=t.get("median_ms"), tps=m.get("tokens_per_s"),
                         tflops=m.get("tflops_per_gpu"), mfu=m.get("mfu_datasheet"), mem=mem / 2**30,
                         comm=j.get("comm", {}).get("matches_model"), status=j.get("status", "?")))
        if versions is None:
            mach = j.get("machine", {})
            versions = ", ".join(f"{k} {mach.get(k)}" for k in ("driver", "cuda", "nccl", "cudnn", "cublas", "mpi") if mach.get(k))
    except Exception as e:  # a truncated or changed file must not hide the others
        lines.append(f"{f.name}: unreadable ({e})")
if versions:
    lines.append("loaded: " + versions)

lines.append("")
lines.append(f"{'step':<40} {'outcome':<8} {'s':>5}  detail")
for row in steps_file.read_text().splitlines():
    status, name, secs, detail = (row.split("\t") + ["", "", "", ""])[:4]
    lines.append(f"{name:<40} {status:<8} {secs:>5}  {detail}")

def fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"

serial_ms = {r["T"]: r["ms"] for r in runs if r["strategy"] == "serial" and r["ms"]}
lines.append("")
lines.append(f"{'point':<26} {'gpus':>4} {'T':>6} {'step ms':>9} {'tokens/s':>10} {'TFLOP/s/GPU':>11} "
             f"{'MFU':>5} {'mem GiB':>7} {'x serial':>8} {'comm=model':>10} status")
for r in sorted(runs, key=lambda r: (r["gpus"], r["T"], r["strategy"])):
    speedup = serial_ms[r["T"]] / r["ms"] if r["T"] in serial_ms and r["ms"] else None
    lines.append(f"{r['name']:<26} {r['gpus']:>4} {r['T']:>6} {fmt(r['ms'], '9.2f')} {fmt(r['tps'], '10.0f')} "
                 f"{fmt(r['tflops'], '11.1f')} {fmt(r['mfu'], '5.2f')} {fmt(r['mem'], '7.2f')} "
                 f"{fmt(speedup, '8.2f')} {str(r['comm']):>10} {r['status']}")
if not runs:
    lines.append("(no result JSON)")
lines.append("")
lines.append("x serial: serial step time at the same T over this step time (strong scaling); "
             "MFU against the datasheet peak; mem: device peak per rank.")
out_file.write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
}

main() {
  echo "gpu_run.sh on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ), output to $out"

  # ---- the carried bundle ----
  local t0=$SECONDS
  if unpack; then
    record PASS "unpack .device" $((SECONDS - t0)) ""
  else
    record FAIL "unpack .device" $((SECONDS - t0)) "no usable .device"
  fi
  [[ -f $dev/MANIFEST.txt ]] && head -n 3 "$dev/MANIFEST.txt"
  export PATH=$dev/mpich/bin:$PATH
  export LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${orig_ld:+:$orig_ld}
  export NCCL_NVLS_ENABLE=0
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  export GTEST_COLOR=no

  # ---- GPUs and libraries ----
  echo
  echo "=== GPUs"
  sys nvidia-smi -L | tee "$work/gpus.txt"
  sys nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.max.sm --format=csv
  sys nvidia-smi topo -m 2>/dev/null | head -n 12
  local ngpu
  ngpu=${LSS_GPUS:-$(grep -c '^GPU ' "$work/gpus.txt" 2>/dev/null)}
  ngpu=${ngpu:-0}
  echo "GPU count: $ngpu"
  ((ngpu >= 1)) || record FAIL "GPU count" 0 "nvidia-smi lists no GPU"

  echo
  echo "=== libraries"
  local lib
  for lib in libcuda.so.1 libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2 libcudnn.so.9; do
    local path
    path=$(sys ldconfig -p 2>/dev/null | awk -v l="$lib" '$1 == l && /x86-64/ { print $NF; exit }')
    printf '  %-20s %s\n' "$lib" "${path:+$(readlink -f "$path")}"
  done
  local cudnn_h
  for cudnn_h in /usr/include/cudnn_version.h /usr/include/x86_64-linux-gnu/cudnn_version*.h /usr/local/cuda/include/cudnn_version.h; do
    [[ -f $cudnn_h ]] || continue
    echo "  cuDNN header $cudnn_h: $(awk '$1 == "#define" && $2 ~ /^CUDNN_(MAJOR|MINOR|PATCHLEVEL)$/ { printf "%s ", $3 }' "$cudnn_h")"
    break
  done
  mpiexec.hydra --version 2>&1 | head -n 3
  if [[ -x $dev/bin/lssbench ]]; then
    echo "lssbench resolves:"
    ldd "$dev/bin/lssbench" | grep -E 'nccl|cudnn|cublas|cudart|mpich|openblas|fmt|gomp|not found'
    if ldd "$dev/bin/lssbench" | grep -q 'not found'; then
      record FAIL "ldd lssbench" 0 "a library is not found (see above)"
    fi
  fi

  # ---- tests ----
  local t
  for t in test_cuda_kernels test_cuda_attention; do
    if [[ -x $dev/bin/$t ]]; then
      step "$t" "$test_limit" "$dev/bin/$t"
    elif [[ $t == test_cuda_attention ]]; then
      record SKIP "$t" 0 "not in the bundle"
    else
      record FAIL "$t" 0 "not in the bundle"
    fi
  done
  local np
  for np in 1 2 4; do
    ((np <= ngpu)) || { record SKIP "test_strategies_cuda -n $np" 0 "only $ngpu GPUs"; continue; }
    if [[ -x $dev/bin/test_strategies_cuda ]]; then
      step "test_strategies_cuda -n $np" "$test_limit" mpiexec.hydra -n "$np" "$dev/bin/test_strategies_cuda"
    else
      record FAIL "test_strategies_cuda -n $np" 0 "not in the bundle"
    fi
  done

  # ---- benchmark points ----
  local backend=${LSS_BACKEND:-cuda} dtype=${LSS_DTYPE:-bf16} attention=${LSS_ATTENTION:-auto}
  local -a model steps_opt
  read -r -a model <<<"${LSS_MODEL:---layers 4 --width 2048 --heads 16 --batch 1}"
  read -r -a steps_opt <<<"${LSS_STEPS:---warmup 3 --iters 10}"
  local -a common=(--backend "$backend" --dtype "$dtype" "${model[@]}" "${steps_opt[@]}")
  [[ $backend == cuda ]] && common+=(--attention "$attention")
  bench() {  # NAME NP ARGS...
    local name=$1 n=$2
    shift 2
    if ((n > ngpu)); then
      record SKIP "bench $name" 0 "needs $n GPUs, $ngpu here"
      return
    fi
    step "bench $name" "$bench_limit" mpiexec.hydra -n "$n" "$dev/bin/lssbench" run "${common[@]}" "$@" \
      --out "$results/$name.json"
  }
  local serial_seq=${LSS_SERIAL_SEQ:-16K} seq
  local -a seqs
  read -r -a seqs <<<"${LSS_SEQS:-16K 64K}"
  bench "serial_T$serial_seq" 1 --strategy serial --seq "$serial_seq"
  for np in 2 4; do
    for seq in "${seqs[@]}"; do
      bench "lss_sp${np}_T$seq" "$np" --strategy lss --sp "$np" --seq "$seq"
      bench "megatron_sp_sp${np}_T$seq" "$np" --strategy megatron_sp --sp "$np" --seq "$seq"
    done
  done

  # ---- results ----
  echo
  if tar -C "$work" -czf "$out/results.tar.gz" results; then
    echo "result JSONs: $out/results.tar.gz ($(find "$results" -name '*.json' | wc -l) files)"
  else
    record FAIL "pack results" 0 "tar failed"
  fi
  echo
  echo "=== summary (elapsed ${SECONDS}s)"
  summarize || { echo "gpu_run.sh: the summary failed"; failed=1; }
  if ((failed)); then
    echo "gpu_run.sh: SOME STEPS FAILED (see above)"
    return 1
  fi
  echo "gpu_run.sh: all steps passed"
  return 0
}

main 2>&1 | tee "$out/log.txt"
rc=${PIPESTATUS[0]}
rm -rf "$work"
exit "$rc"
