set -u
export NCCL_NVLS_ENABLE=0
bash scripts/gpu_run.sh --unpack-only >/dev/null 2>&1
d=$PWD/.device
export PATH=$d/mpich/bin:$PATH LD_LIBRARY_PATH=$d/lib:$d/mpich/lib:${LD_LIBRARY_PATH:-}
F='^(all_gather|all_gather_zigzag)/bytes:(16777216|67108864|268435456|1073741824)/|^overlap_all_gather/bytes:(67108864|134217728)/gemms:(2|4)/sm_reserve:0/'
mkdir -p $OUT/coll
for round in 1 2; do
  echo "--- plain round $round"
  timeout 120 mpiexec.hydra -n 2 $d/bin/bench_collectives --backend=cuda --large --benchmark_filter="$F" --benchmark_out=$OUT/coll/plain$round.json --benchmark_out_format=json 2>&1 | grep -E "^(all_gather|overlap)"
  echo "--- registered round $round"
  NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=REG timeout 120 mpiexec.hydra -n 2 $d/bin/bench_collectives --backend=cuda --large --registered --benchmark_filter="$F" --benchmark_out=$OUT/coll/registered$round.json --benchmark_out_format=json > $OUT/coll/registered$round.log 2>&1
  grep -E "^(all_gather|overlap)" $OUT/coll/registered$round.log
  grep -v "^(all_gather|overlap)" $OUT/coll/registered$round.log | grep -i "reg" | sort | uniq -c | sort -rn | head -8
done
echo "--- lss best registered, NCCL REG log"
NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=REG timeout 120 mpiexec.hydra -n 2 $d/bin/lssbench run --layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda --strategy lss --sp 2 --zigzag --keep-kv --placed-reduce-scatter --distributed-optimizer --registered-gathers --seq 32K --warmup 1 --iters 2 --no-bound --out $OUT/reglog.json > $OUT/reglog.txt 2>&1
grep -i "NCCL INFO" $OUT/reglog.txt | sed -E 's/^[^ ]+ //; s/0x[0-9a-f]+/ADDR/g; s/[0-9]{5,}/N/g' | sort | uniq -c | sort -rn | head -20
grep -E "step|ms" $OUT/reglog.txt | tail -5
cd $OUT && tar czf all.tar.gz coll reglog.txt
