set -u
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader
OUT=$OUT/sw timeout 580 bash scripts/gpu_perf.sh sweep sweeps/gpu-paper.json sweep sweeps/gpu-strong.json 2>&1 | grep -E ">>> rc|_w[12]_sp|speed" | tail -30
cd $OUT && tar czf all.tar.gz sw 2>/dev/null; ls $OUT
