set -u
export NCCL_NVLS_ENABLE=0
bash scripts/gpu_run.sh --unpack-only >/dev/null 2>&1
d=$PWD/.device
export PATH=$d/mpich/bin:$PATH LD_LIBRARY_PATH=$d/lib:$d/mpich/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader
LSS_TESTS=strategies LSS_STEP_TEST_FILTER='*symmetric*' OUT=$OUT/tests timeout 300 bash scripts/gpu_perf.sh tests 2>&1 | grep -E "^\[  (PASSED|FAILED)|FAILED|>>> rc"
M="--layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda --sp 2 --strategy megatron_sp --seq 32K --warmup 1 --iters 1 --no-bound"
NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=TUNING timeout 100 mpiexec.hydra -n 2 $d/bin/lssbench run $M --symmetric-collectives --out $OUT/tuning.json > $OUT/tuning.txt 2>&1; echo rc=$?
grep -o 'Kernel [A-Za-z_]* nchannels [0-9]*' $OUT/tuning.txt | sort | uniq -c
timeout 60 mpiexec.hydra -n 2 $d/bin/lssbench run $M --symmetric-collectives --symmetric-ctas 65 > $OUT/bad.txt 2>&1; echo "bad rc=$?"; grep -m2 "symmetric-ctas" $OUT/bad.txt
cd $OUT && xz -9 tuning.txt; tar czf all.tar.gz tests tuning.json tuning.txt.xz bad.txt 2>/dev/null; ls
