set -u
export NCCL_NVLS_ENABLE=0
bash scripts/gpu_run.sh --unpack-only >/dev/null 2>&1
d=$PWD/.device
export PATH=$d/mpich/bin:$PATH LD_LIBRARY_PATH=$d/lib:$d/mpich/lib:${LD_LIBRARY_PATH:-}
F='^(all_gather|all_gather_zigzag)/bytes:(16777216|67108864|268435456|1073741824)/'
mkdir -p $OUT/coll
for round in 1 2; do
  for kind in plain registered; do
    a=""; [ $kind = registered ] && a=--registered
    timeout 120 mpiexec.hydra -n 2 $d/bin/bench_collectives --backend=cuda --large $a --benchmark_filter="$F" --benchmark_out=$OUT/coll/$kind$round.json --benchmark_out_format=json > $OUT/coll/$kind$round.log 2>&1 || echo "rc=$? $kind"
  done
done
python3 - $OUT/coll <<'PY'
import json,sys
rows={}
for kind in ("plain","registered"):
    for r in (1,2):
        for b in json.load(open(f"{sys.argv[1]}/{kind}{r}.json"))["benchmarks"]:
            rows.setdefault(b["name"].replace("/iterations:20/manual_time",""),{}).setdefault(kind,[]).append(b["real_time"])
for n,d in rows.items(): print(f"{n:45s} plain {d['plain']} registered {d['registered']}")
PY
B="--keep-kv --placed-reduce-scatter --distributed-optimizer"
LSS_AB_BASE=$d/bin/lssbench LSS_AB_STRATEGIES=lss LSS_AB_SEQ_PER_GPU=16 LSS_AB_ITERS=8 LSS_AB_TAG=regp2p LSS_AB_BASE_ARGS="$B" LSS_AB_NEW_ARGS="$B --registered-gathers" OUT=$OUT/ab bash scripts/gpu_perf.sh ab 2>&1 | grep -E "^ab_|>>> rc"
LSS_TESTS=strategies LSS_STEP_TEST_FILTER='*lss*registered*' OUT=$OUT/tests bash scripts/gpu_perf.sh tests 2>&1 | grep -E "^\[ |PASSED|FAILED|rc="
cd $OUT && tar czf all.tar.gz coll ab tests
