set -u
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm,driver_version --format=csv,noheader
# The GPU workflow's test step on 2 GPUs: kernels, attention, the CUDA step test on 2 ranks.
OUT=$OUT/t timeout 585 bash scripts/gpu_perf.sh tests 2>&1 | tail -60
ls -R $OUT | head
