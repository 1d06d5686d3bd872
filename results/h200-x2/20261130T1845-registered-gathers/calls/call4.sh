set -u
export NCCL_NVLS_ENABLE=0
bash scripts/gpu_run.sh --unpack-only >/dev/null 2>&1
d=$PWD/.device
LSS_AB_BASE=$d/bin/lssbench LSS_AB_STRATEGIES=megatron_sp LSS_AB_SEQ_PER_GPU="8 32" LSS_AB_ITERS=8 LSS_AB_TAG=regm LSS_AB_NEW_ARGS="--registered-gathers" bash scripts/gpu_perf.sh ab 2>&1 | grep -E "^ab_|>>> rc"
