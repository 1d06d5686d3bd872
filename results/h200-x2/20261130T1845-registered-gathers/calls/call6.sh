set -u
export NCCL_NVLS_ENABLE=0
bash scripts/gpu_run.sh --unpack-only >/dev/null 2>&1
d=$PWD/.device
export PATH=$d/mpich/bin:$PATH LD_LIBRARY_PATH=$d/lib:$d/mpich/lib:${LD_LIBRARY_PATH:-}
F='^(all_gather|reduce_scatter|all_reduce)/bytes:(67108864|268435456|1073741824)/|^overlap_(all_gather|reduce_scatter)/bytes:(67108864|134217728)/gemms:(2|4)/sm_reserve:0/'
mkdir -p $OUT/coll
for kind in plain symmetric registered; do
  a=""; [ $kind != plain ] && a=--$kind
  NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=TUNING,REG timeout 100 mpiexec.hydra -n 2 $d/bin/bench_collectives --backend=cuda --large $a --benchmark_filter="$F" --benchmark_out=$OUT/coll/$kind.json --benchmark_out_format=json > $OUT/coll/$kind.log 2>&1 || echo "rc=$? $kind"
  grep -i "symk\|symmetric\|Sym" $OUT/coll/$kind.log | sed -E 's/^[^ ]+ //; s/0x[0-9a-f]+/ADDR/g' | sort | uniq -c | sort -rn | head -4
done
python3 - $OUT/coll <<'PY'
import json,sys,os
rows={}
for kind in ("plain","symmetric","registered"):
    f=f"{sys.argv[1]}/{kind}.json"
    if not os.path.exists(f) or os.path.getsize(f)==0: continue
    for b in json.load(open(f))["benchmarks"]:
        n=b["name"].replace("/iterations:20/manual_time","").replace("/sm_reserve:0","")
        v=f"{b['real_time']:.0f}" if not n.startswith("overlap") else f"{b['gemm_slowdown']:.3f}/{b['hidden']:.2f}/{b['together_us']:.0f}"
        rows.setdefault(n,{})[kind]=v
for n,d in rows.items(): print(f"{n:48s} " + "  ".join(f"{k} {d.get(k,'-'):>16s}" for k in ("plain","symmetric","registered")))
PY
cd $OUT && tar czf all.tar.gz coll
