set -u
export NCCL_NVLS_ENABLE=0
bash scripts/gpu_run.sh --unpack-only >/dev/null 2>&1
d=$PWD/.device
export PATH=$d/mpich/bin:$PATH LD_LIBRARY_PATH=$d/lib:$d/mpich/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader
F='^(all_gather|all_gather_zigzag)/bytes:(16777216|67108864|268435456|1073741824)$|^overlap_all_gather/bytes:(67108864|134217728)/gemms:(2|4)/sm_reserve:0$'
mkdir -p $OUT/coll
for round in 1 2; do
  timeout 120 mpiexec.hydra -n 2 $d/bin/bench_collectives --backend=cuda --large --benchmark_filter="$F" --benchmark_out=$OUT/coll/plain$round.json --benchmark_out_format=json 2>&1 | grep -E "^(all_gather|overlap)" 
  echo "--- registered round $round"
  NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=REG timeout 120 mpiexec.hydra -n 2 $d/bin/bench_collectives --backend=cuda --large --registered --benchmark_filter="$F" --benchmark_out=$OUT/coll/registered$round.json --benchmark_out_format=json > $OUT/coll/registered$round.log 2>&1
  grep -E "^(all_gather|overlap)" $OUT/coll/registered$round.log
  grep -c -i "regist" $OUT/coll/registered$round.log
  grep -i "regist" $OUT/coll/registered$round.log | head -5
done
B="--keep-kv --placed-reduce-scatter --distributed-optimizer"
LSS_AB_BASE=$d/bin/lssbench LSS_AB_STRATEGIES=lss LSS_AB_SEQ_PER_GPU=16 LSS_AB_ITERS=8 LSS_AB_TAG=reg LSS_AB_BASE_ARGS="$B" LSS_AB_NEW_ARGS="$B --registered-gathers" OUT=$OUT/ab bash scripts/gpu_perf.sh ab 2>&1 | grep -E "^ab_|>>> rc"
LSS_AB_BASE=$d/bin/lssbench LSS_AB_STRATEGIES=megatron_sp LSS_AB_SEQ_PER_GPU=16 LSS_AB_ITERS=8 LSS_AB_TAG=regm LSS_AB_NEW_ARGS="--registered-gathers" OUT=$OUT/abm bash scripts/gpu_perf.sh ab 2>&1 | grep -E "^ab_|>>> rc"
LSS_TESTS=strategies LSS_STEP_TEST_FILTER='*registered*' OUT=$OUT/tests bash scripts/gpu_perf.sh tests 2>&1 | tail -25
cd $OUT && tar czf all.tar.gz coll ab abm tests 2>/dev/null; ls -la $OUT
