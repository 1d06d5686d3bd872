set -u
export NCCL_NVLS_ENABLE=0
bash scripts/gpu_run.sh --unpack-only >/dev/null 2>&1
d=$PWD/.device
export PATH=$d/mpich/bin:$PATH LD_LIBRARY_PATH=$d/lib:$d/mpich/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader
F='^(all_gather|reduce_scatter)/bytes:(134217728|268435456)/|^overlap_(all_gather|reduce_scatter)/bytes:134217728/gemms:(2|4)/sm_reserve:0/'
mkdir -p $OUT/coll
for kind in plain sym9 sym16 sym24 sym32; do
  a=""; e=""
  case $kind in sym*) a=--symmetric; n=${kind#sym}; [ $n != 9 ] && e="NCCL_SYM_CTAS=$n";; esac
  env $e NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=TUNING timeout 100 mpiexec.hydra -n 2 $d/bin/bench_collectives --backend=cuda --large $a --benchmark_filter="$F" --benchmark_out=$OUT/coll/$kind.json --benchmark_out_format=json > $OUT/coll/$kind.log 2>&1 || echo "rc=$? $kind"
  echo "$kind: $(grep -o 'Kernel [A-Za-z_]* nchannels [0-9]*' $OUT/coll/$kind.log | sort | uniq -c | tr '\n' ' ')"
done
python3 - $OUT/coll <<'PY'
import json,sys,os
kinds=("plain","sym9","sym16","sym24","sym32")
rows={}
for kind in kinds:
    f=f"{sys.argv[1]}/{kind}.json"
    if not os.path.exists(f) or os.path.getsize(f)==0: continue
    for b in json.load(open(f))["benchmarks"]:
        n=b["name"].replace("/iterations:20/manual_time","").replace("/sm_reserve:0","")
        v=f"{b['real_time']:.0f}" if not n.startswith("overlap") else f"{b['gemm_slowdown']:.3f}/{b['together_us']:.0f}"
        rows.setdefault(n,{})[kind]=v
print(f"{'benchmark':44s} " + " ".join(f"{k:>12s}" for k in kinds))
for n,d in rows.items(): print(f"{n:44s} " + " ".join(f"{d.get(k,'-'):>12s}" for k in kinds))
PY
B="--keep-kv --placed-reduce-scatter --distributed-optimizer"
R="--keep-kv --distributed-optimizer --placed-gather-min 1G"
NCCL_SYM_CTAS=24 LSS_AB_BASE=$d/bin/lssbench LSS_AB_STRATEGIES=lss LSS_AB_SEQ_PER_GPU=16 LSS_AB_ITERS=8 LSS_AB_TAG=best24 LSS_AB_BASE_ARGS="$B" LSS_AB_NEW_ARGS="$R --symmetric-collectives" OUT=$OUT/best24 bash scripts/gpu_perf.sh ab 2>&1 | grep -E "^ab_|>>> rc"
NCCL_SYM_CTAS=24 LSS_AB_BASE=$d/bin/lssbench LSS_AB_STRATEGIES=megatron_sp LSS_AB_SEQ_PER_GPU=16 LSS_AB_ITERS=8 LSS_AB_TAG=symm24 LSS_AB_NEW_ARGS="--symmetric-collectives" OUT=$OUT/symm24 bash scripts/gpu_perf.sh ab 2>&1 | grep -E "^ab_|>>> rc"
cd $OUT && for k in plain sym9 sym16 sym24 sym32; do xz -9 coll/$k.log; done; tar czf all.tar.gz coll best24 symm24 2>/dev/null; ls -la $OUT
