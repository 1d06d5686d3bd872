set -u
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader
mkdir -p /tmp/specs
for r in 1 2; do
  for mt in 0 1; do
    python3 - sweeps/gpu-weak-lss-best.json /tmp/specs/lssbest-mt$mt-r$r.json $mt $r <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); mt = int(sys.argv[3])
j["name"] += f"-mt{mt}-r{sys.argv[4]}"
if mt: j["min_time_s"] = mt
j["world"] = [1, 2]
json.dump(j, open(sys.argv[2], "w"), indent=1)
PY
  done
done
OUT=$OUT/sw timeout 560 bash scripts/gpu_perf.sh sweep /tmp/specs/lssbest-mt0-r1.json sweep /tmp/specs/lssbest-mt1-r1.json sweep /tmp/specs/lssbest-mt0-r2.json sweep /tmp/specs/lssbest-mt1-r2.json 2>&1 | grep -E ">>> rc|_w[12]_sp" | tail -16
cd $OUT && tar czf all.tar.gz sw 2>/dev/null; ls
