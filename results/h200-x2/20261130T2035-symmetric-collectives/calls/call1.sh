set -u
export NCCL_NVLS_ENABLE=0
bash scripts/gpu_run.sh --unpack-only >/dev/null 2>&1
d=$PWD/.device
export PATH=$d/mpich/bin:$PATH LD_LIBRARY_PATH=$d/lib:$d/mpich/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader
LSS_TESTS=strategies LSS_STEP_TEST_FILTER='*symmetric*' OUT=$OUT/tests bash scripts/gpu_perf.sh tests 2>&1 | grep -E "^\[  (PASSED|FAILED)|FAILED|>>> rc|tests, "
echo "--- lss rank-major symmetric, NCCL TUNING log"
M="--layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda --sp 2"
NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=TUNING timeout 120 mpiexec.hydra -n 2 $d/bin/lssbench run $M --strategy lss --zigzag --keep-kv --distributed-optimizer --placed-gather-min 1G --symmetric-collectives --seq 32K --warmup 1 --iters 2 --no-bound --out $OUT/tuning.json > $OUT/tuning.txt 2>&1; echo rc=$?
grep "NCCL INFO" $OUT/tuning.txt | grep -i -E "AllGather|ReduceScatter|AllReduce|sym" | sed -E 's/^[^ ]+ //; s/0x[0-9a-f]+/ADDR/g; s/count [0-9]+/count N/g; s/opCount [0-9a-f]+/opCount X/g' | sort | uniq -c | sort -rn | head -16
B="--keep-kv --placed-reduce-scatter --distributed-optimizer"
R="--keep-kv --distributed-optimizer --placed-gather-min 1G"
LSS_AB_BASE=$d/bin/lssbench LSS_AB_STRATEGIES=lss LSS_AB_SEQ_PER_GPU=16 LSS_AB_ITERS=8 LSS_AB_TAG=sym LSS_AB_BASE_ARGS="$R" LSS_AB_NEW_ARGS="$R --symmetric-collectives" OUT=$OUT/sym bash scripts/gpu_perf.sh ab 2>&1 | grep -E "^ab_|>>> rc"
LSS_AB_BASE=$d/bin/lssbench LSS_AB_STRATEGIES=lss LSS_AB_SEQ_PER_GPU=16 LSS_AB_ITERS=8 LSS_AB_TAG=best LSS_AB_BASE_ARGS="$B" LSS_AB_NEW_ARGS="$R --symmetric-collectives" OUT=$OUT/best bash scripts/gpu_perf.sh ab 2>&1 | grep -E "^ab_|>>> rc"
cd $OUT && tar czf all.tar.gz tests tuning.txt tuning.json sym best 2>/dev/null; ls -la $OUT
