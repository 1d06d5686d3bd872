#!/usr/bin/env bash
# Device call (not committed; the results folder keeps a copy): GPU kernel tests of the bundle,
# the serial step at T = 16K, base (HEAD's lssbench) against new (the bundle), alternating, beside
# the PyTorch eager peer, then the new step's kernels under ncu.
set -u
cd "$(dirname "$0")/.."
dev=$PWD/.device
[ -x "$dev/bin/lssbench" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
[ -x "$dev/base_lssbench" ] || { xz -dc "$dev/base_lssbench.xz" > "$dev/base_lssbench" && chmod +x "$dev/base_lssbench"; }
export LD_LIBRARY_PATH=$dev/lib:$dev/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
out=${OUT:-/tmp/out}; mkdir -p "$out"
t0=$(date +%s)
el() { echo "$(( $(date +%s) - t0 )) s"; }
log() { tee -a "$out/log.txt"; }
nvidia-smi --query-gpu=name,clocks.sm,power.draw,power.limit --format=csv | log
model="--layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda --strategy serial --seq 16K"
if [ -n "${RUN_TESTS:-}" ]; then
  echo "=== test_cuda_kernels ($(el))" | log
  timeout 150 "$dev/bin/test_cuda_kernels" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -8 | log
fi
if [ -n "${RUN_STRAT:-}" ]; then
  echo "=== test_strategies_cuda ($(el))" | log
  timeout 300 "$dev/mpich/bin/mpiexec.hydra" -n 1 "$dev/bin/test_strategies_cuda" --gtest_brief=1 2>&1 | grep -v "^\[ note" | tail -8 | log
fi
if [ -n "${RUN_PROBE:-}" ]; then
  echo "=== bgrad_probe ($(el))" | log
  timeout 60 "$dev/bgrad_probe" 2>&1 | log
fi
for rep in ${REPS:-1 2}; do
  for which in base new; do
    bin=$dev/bin/lssbench; [ $which = base ] && bin=$dev/base_lssbench
    echo "=== serial $which rep $rep ($(el))" | log
    timeout 120 "$bin" run $model --warmup 3 --iters 10 --out "$out/serial_${which}_r$rep.json" 2>&1 \
      | grep -E "step median|device during|analytic|rror" | log
  done
  if [ -n "${RUN_EAGER:-}" ]; then
    echo "=== eager rep $rep ($(el))" | log
    env LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib timeout 120 python3 bench/peers/torch_step.py \
      --out "$out/eager_r$rep.json" --strategy serial --mode eager --seq 16K 2>&1 | tail -3 | log
  fi
done
if [ -n "${RUN_NCU:-}" ]; then
  echo "=== ncu new ($(el))" | log
  csv=/tmp/ncu.csv
  timeout 240 ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv --print-units base \
    --log-file "$csv" "$dev/bin/lssbench" run $model --warmup 1 --iters 1 --no-bound --no-measure-peak --out /tmp/ncu.json >/dev/null 2>&1
  env LD_LIBRARY_PATH= python3 - "$csv" 2 <<'PY' | tee "$out/profile_serial_T16K.txt"
import csv, collections, sys
rows = list(csv.reader(open(sys.argv[1], errors="replace")))
head = next((i for i, r in enumerate(rows) if "Kernel Name" in r and "Metric Value" in r), None)
if head is None:
    sys.exit(f"{sys.argv[1]}: no ncu CSV header (ncu failed?)")
h = rows[head]
name_col, value_col = h.index("Kernel Name"), h.index("Metric Value")
per = collections.defaultdict(lambda: [0, 0.0])
for r in rows[head + 1:]:
    if len(r) <= max(name_col, value_col):
        continue
    try:
        ns = float(r[value_col].replace(",", ""))
    except ValueError:
        continue
    k = per[r[name_col][:110]]
    k[0] += 1
    k[1] += ns
steps = int(sys.argv[2])
total = sum(v[1] for v in per.values())
print(f"kernel time per step {total / steps / 1e6:.2f} ms over {sum(v[0] for v in per.values())} launches in {steps} steps")
for name, (n, ns) in sorted(per.items(), key=lambda kv: -kv[1][1])[:45]:
    print(f"{ns / steps / 1e6:9.3f} {n / steps:10.1f}  {name}")
PY
fi
echo "=== end ($(el))" | log
