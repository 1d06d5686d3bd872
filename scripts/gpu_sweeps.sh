#!/usr/bin/env bash
# Runs sweep presets ON a GPU machine, from the repository root, with .device/ (scripts/gpu_bundle.sh)
# carried along:   device tool: run(command="bash scripts/gpu_sweeps.sh sweeps/gpu-strong.json ...",
#                                    carry=[".device"])
# Each sweep writes $OUT/<name>/ (points, logs, aggregate); they come back as $OUT/sweeps.tar.gz,
# with $OUT/sweeps.log. LSS_STEP_TEST=1 first runs the GPU step test on every GPU.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
out=${OUT:-/tmp/lss-gpu-out}
mkdir -p "$out"
dev=$root/.device
[ -d "$dev/bin" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz" || { echo "cannot unpack $dev/bundle.tar.xz"; exit 1; }
# The sweep launches `mpiexec`; the carried MPICH has it as mpiexec.hydra.
ln -sf mpiexec.hydra "$dev/mpich/bin/mpiexec"
export PATH=$dev/mpich/bin:$PATH LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export NCCL_NVLS_ENABLE=0
gpus=$(nvidia-smi -L | grep -c "^GPU")
work=$(mktemp -d)
failed=0
{
  echo "GPUs: $gpus"
  if [ "${LSS_STEP_TEST:-0}" = 1 ]; then
    timeout 150 mpiexec -n "$gpus" "$dev/bin/test_strategies_cuda" 2>&1 | grep -E "^\[ |PASSED|FAILED|Failure|Expected" | head -80 || failed=1
  fi
  for spec in "$@"; do
    name=$(basename "$spec" .json)
    echo "=== sweep $spec"
    "$dev/bin/lssbench" sweep "$spec" --out "$work/$name" || failed=1
  done
} 2>&1 | tee "$out/sweeps.log"
tar -C "$work" -czf "$out/sweeps.tar.gz" . || failed=1
exit $failed
