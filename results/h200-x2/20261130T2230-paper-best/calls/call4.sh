set -u
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader
mkdir -p /tmp/specs
for s in gpu-weak-lss-best gpu-weak-megatron-best; do
  python3 - sweeps/$s.json /tmp/specs/$s-mt1.json <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); j["name"] += "-mt1"; j["min_time_s"] = 1
j["description"] += "; timed for at least 1 s (min_time_s), so that each point's energy is taken over >= 0.8 s of counter updates"
json.dump(j, open(sys.argv[2], "w"), indent=1)
PY
done
OUT=$OUT/sw timeout 560 bash scripts/gpu_perf.sh sweep /tmp/specs/gpu-weak-lss-best-mt1.json sweep /tmp/specs/gpu-weak-megatron-best-mt1.json 2>&1 | grep -E ">>> rc|_w[12]_sp|J/step" | tail -12
cd $OUT && tar czf all.tar.gz sw 2>/dev/null; ls
