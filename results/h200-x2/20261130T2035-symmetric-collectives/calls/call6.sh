set -u
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader
OUT=$OUT/sw bash scripts/gpu_perf.sh sweep sweeps/gpu-weak-lss-best.json sweep sweeps/gpu-weak.json sweep sweeps/gpu-weak-megatron-best.json 2>&1 | grep -E ">>> rc|_w[12]_sp|weak" | tail -20
