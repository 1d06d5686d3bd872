set -u
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm,driver_version --format=csv,noheader
bash scripts/gpu_run.sh --unpack-only > /dev/null 2>&1
d=$PWD/.device
export PATH=$d/mpich/bin:$PATH LD_LIBRARY_PATH=$d/lib:$d/mpich/lib:${LD_LIBRARY_PATH:-}
# The whole CUDA step test on 1 rank with every test's time (call 2's 200 s limit cut off its last case).
SECONDS=0
timeout 300 mpiexec.hydra -n 1 $d/bin/test_strategies_cuda > $OUT/np1_timed_log.txt 2>&1; echo "np1 rc=$? in $SECONDS s"
grep -E '^\[       OK|FAILED|PASSED|SKIPPED|tests from' $OUT/np1_timed_log.txt | tail -90
