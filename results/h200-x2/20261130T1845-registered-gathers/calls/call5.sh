set -u
export NCCL_NVLS_ENABLE=0
bash scripts/gpu_run.sh --unpack-only >/dev/null 2>&1
d=$PWD/.device
B="--keep-kv --placed-reduce-scatter --distributed-optimizer"
LSS_AB_BASE=$d/bin/lssbench LSS_AB_STRATEGIES=lss LSS_AB_SEQ_PER_GPU=16 LSS_AB_ITERS=8 LSS_AB_TAG=pipereg LSS_AB_BASE_ARGS="$B" LSS_AB_NEW_ARGS="$B --chunk-pipeline --registered-gathers" OUT=$OUT/pipereg bash scripts/gpu_perf.sh ab 2>&1 | grep -E "^ab_|>>> rc"
LSS_AB_BASE=$d/bin/lssbench LSS_AB_STRATEGIES=lss LSS_AB_SEQ_PER_GPU=16 LSS_AB_ITERS=8 LSS_AB_TAG=pipe LSS_AB_BASE_ARGS="$B" LSS_AB_NEW_ARGS="$B --chunk-pipeline" OUT=$OUT/pipe bash scripts/gpu_perf.sh ab 2>&1 | grep -E "^ab_|>>> rc"
