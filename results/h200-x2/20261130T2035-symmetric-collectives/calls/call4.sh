set -u
export NCCL_NVLS_ENABLE=0
bash scripts/gpu_run.sh --unpack-only >/dev/null 2>&1
d=$PWD/.device
export PATH=$d/mpich/bin:$PATH LD_LIBRARY_PATH=$d/lib:$d/mpich/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader
LSS_TESTS=strategies LSS_STEP_TEST_FILTER='*symmetric*' OUT=$OUT/tests bash scripts/gpu_perf.sh tests 2>&1 | grep -E "^\[  (PASSED|FAILED)|FAILED|>>> rc"
M="--layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda --sp 2 --strategy megatron_sp --seq 32K --warmup 1 --iters 1 --no-bound"
NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=TUNING timeout 100 mpiexec.hydra -n 2 $d/bin/lssbench run $M --symmetric-collectives --out $OUT/tuning.json > $OUT/tuning.txt 2>&1; echo rc=$?
grep -o 'Kernel [A-Za-z_]* nchannels [0-9]*' $OUT/tuning.txt | sort | uniq -c; grep -m1 "options" $OUT/tuning.txt
B="--keep-kv --placed-reduce-scatter --distributed-optimizer"
LSS_AB_BASE=$d/bin/lssbench LSS_AB_STRATEGIES=lss LSS_AB_SEQ_PER_GPU=16 LSS_AB_ITERS=8 LSS_AB_TAG=pipesym LSS_AB_BASE_ARGS="$B" LSS_AB_NEW_ARGS="$B --chunk-pipeline --symmetric-collectives" OUT=$OUT/pipesym bash scripts/gpu_perf.sh ab 2>&1 | grep -E "^ab_|>>> rc"
LSS_AB_BASE=$d/bin/lssbench LSS_AB_STRATEGIES=megatron_sp LSS_AB_SEQ_PER_GPU="8 32" LSS_AB_ITERS=8 LSS_AB_TAG=symm LSS_AB_NEW_ARGS="--symmetric-collectives" OUT=$OUT/symm bash scripts/gpu_perf.sh ab 2>&1 | grep -E "^ab_|>>> rc"
cd $OUT && xz -9 tuning.txt; tar czf all.tar.gz tests tuning.json tuning.txt.xz pipesym symm 2>/dev/null; ls -la $OUT
