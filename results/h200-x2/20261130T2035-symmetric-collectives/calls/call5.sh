set -u
export NCCL_NVLS_ENABLE=0
bash scripts/gpu_run.sh --unpack-only >/dev/null 2>&1
d=$PWD/.device
export PATH=$d/mpich/bin:$PATH LD_LIBRARY_PATH=$d/lib:$d/mpich/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader
OUT=$OUT/sw bash scripts/gpu_perf.sh sweep sweeps/gpu-weak-megatron-best.json 2>&1 | grep -E ">>> rc|megatron_sp_w|weak" | tail -12
LSS_AB_BASE=$d/bin/lssbench LSS_AB_STRATEGIES=megatron_sp LSS_AB_SEQ_PER_GPU=16 LSS_AB_ITERS=8 LSS_AB_TAG=ctas32 LSS_AB_BASE_ARGS="--symmetric-collectives" LSS_AB_NEW_ARGS="--symmetric-collectives --symmetric-ctas 32" OUT=$OUT/ctas32 bash scripts/gpu_perf.sh ab 2>&1 | grep -E "^ab_|>>> rc"
S="--keep-kv --distributed-optimizer"
B="--keep-kv --placed-reduce-scatter --distributed-optimizer"
LSS_AB_BASE=$d/bin/lssbench LSS_AB_STRATEGIES=lss LSS_AB_SEQ_PER_GPU=16 LSS_AB_ITERS=8 LSS_AB_TAG=symrs24 LSS_AB_BASE_ARGS="$B" LSS_AB_NEW_ARGS="$S --symmetric-collectives" OUT=$OUT/symrs24 bash scripts/gpu_perf.sh ab 2>&1 | grep -E "^ab_|>>> rc"
cd $OUT && tar czf all.tar.gz sw ctas32 symrs24 2>/dev/null; ls -la $OUT
