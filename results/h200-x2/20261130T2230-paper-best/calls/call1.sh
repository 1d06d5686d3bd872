set -u
export NCCL_NVLS_ENABLE=0
bash scripts/gpu_run.sh --unpack-only >/dev/null 2>&1
d=$PWD/.device
export PATH=$d/mpich/bin:$PATH LD_LIBRARY_PATH=$d/lib:$d/mpich/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader
M="--layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda --sp 2 --strategy lss --zigzag --seq 32K --warmup 2 --iters 6"
timeout 120 mpiexec.hydra -n 2 $d/bin/lssbench run $M --keep-kv --distributed-optimizer --symmetric-collectives --out $OUT/bound_symrs.json > $OUT/bound_symrs.txt 2>&1; echo rc=$?
python3 - $OUT/bound_symrs.json <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); b = j["bound"]
print("step", j["timing"]["median_ms"], "bound", b["bound_ms"], "contended", b["contended"]["bound_ms"])
for c in b["rank0"]["comm"]:
    if c["what"].startswith(("gradient reduce-scatter, bucket 1", "parameter all-gather, bucket 1", "dK/dV", "K/V")):
        print(f'{c["what"]:<45} plain {c["plain_memory"]!s:<5} {c["bytes"]/2**20:8.1f} MiB {c["measured_ms"]:7.3f} ms')
PY
OUT=$OUT/sw timeout 470 bash scripts/gpu_perf.sh sweep sweeps/gpu-paper-best.json 2>&1 | grep -E ">>> rc|_w[12]_sp|speed" | tail -20
cd $OUT && tar czf all.tar.gz bound_symrs.json bound_symrs.txt sw 2>/dev/null; ls $OUT
