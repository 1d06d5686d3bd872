set -u
bash scripts/gpu_run.sh --unpack-only >/dev/null 2>&1
d=$PWD/.device
export PATH=$d/mpich/bin:$PATH LD_LIBRARY_PATH=$d/lib:$d/mpich/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader
timeout 300 $d/bin/test_cuda_kernels > $OUT/test_cuda_kernels.txt 2>&1; echo "test_cuda_kernels rc=$?"
grep -E "energy counter|^\[  (PASSED|FAILED)|FAILED" $OUT/test_cuda_kernels.txt | head
M="--layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda --strategy serial --seq 16K --warmup 2"
timeout 100 $d/bin/lssbench run $M --iters 6 --no-bound --out $OUT/serial_i6.json > $OUT/serial_i6.txt 2>&1; echo rc=$?
grep -E "energy|step time|median" $OUT/serial_i6.txt | head -5
timeout 100 $d/bin/lssbench run $M --iters 6 --min-time 1 --no-bound --out $OUT/serial_mt1.json > $OUT/serial_mt1.txt 2>&1; echo rc=$?
grep -E "energy|median" $OUT/serial_mt1.txt | head -5
python3 - $OUT/serial_i6.json $OUT/serial_mt1.json <<'PY'
import json, sys
for f in sys.argv[1:]:
    j = json.load(open(f)); d = j["timing"]["device_state"]["per_rank"][0]
    print(f.split("/")[-1], len(j["timing"]["iterations_ms"]), "steps", {k: d.get(k) for k in ("region_s", "energy_updates", "energy_window_s", "energy_j", "mean_power_w")}, j["metrics"].get("energy_j_per_step"))
PY
cd $OUT && tar czf all.tar.gz test_cuda_kernels.txt serial_i6.* serial_mt1.*; ls
