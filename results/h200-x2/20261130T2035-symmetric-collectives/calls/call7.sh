set -u
export NCCL_NVLS_ENABLE=0
bash scripts/gpu_run.sh --unpack-only >/dev/null 2>&1
d=$PWD/.device
export PATH=$d/mpich/bin:$PATH LD_LIBRARY_PATH=$d/lib:$d/mpich/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader
S="--keep-kv --distributed-optimizer"
B="--keep-kv --placed-reduce-scatter --distributed-optimizer"
LSS_AB_BASE=$d/bin/lssbench LSS_AB_STRATEGIES=lss LSS_AB_SEQ_PER_GPU=32 LSS_AB_ITERS=6 LSS_AB_TAG=symrs64 LSS_AB_BASE_ARGS="$B" LSS_AB_NEW_ARGS="$S --symmetric-collectives" OUT=$OUT/symrs64 timeout 200 bash scripts/gpu_perf.sh ab 2>&1 | grep -E "^ab_|>>> rc"
LSS_AB_BASE=$d/bin/lssbench LSS_AB_STRATEGIES=megatron_sp LSS_AB_SEQ_PER_GPU=16 LSS_AB_ITERS=8 LSS_AB_TAG=ctas32b LSS_AB_BASE_ARGS="--symmetric-collectives" LSS_AB_NEW_ARGS="--symmetric-collectives --symmetric-ctas 32" OUT=$OUT/ctas32b timeout 150 bash scripts/gpu_perf.sh ab 2>&1 | grep -E "^ab_|>>> rc"
cd $OUT && tar czf all.tar.gz symrs64 ctas32b 2>/dev/null; ls $OUT
