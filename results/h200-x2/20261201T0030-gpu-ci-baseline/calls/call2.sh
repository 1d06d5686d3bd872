set -u
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm,driver_version --format=csv,noheader
# The GPU workflow's sweep (gpu-strong on 2 GPUs), then the CUDA step test on 1 rank and the cases
# of the 2-rank test that call 1's 450 s limit cut off.
OUT=$OUT/sw timeout 330 bash scripts/gpu_perf.sh sweep sweeps/gpu-strong.json 2>&1 | grep -E ">>> rc|ok  elapsed|fail" | tail -14
d=$PWD/.device
export PATH=$d/mpich/bin:$PATH LD_LIBRARY_PATH=$d/lib:$d/mpich/lib:${LD_LIBRARY_PATH:-}
SECONDS=0
timeout 100 mpiexec.hydra -n 2 $d/bin/test_strategies_cuda --gtest_brief=1 --gtest_filter='*zigzag_rankmajor:*optbwd*:*gradbf16*:*chunks4*' > $OUT/np2_rest_log.txt 2>&1; echo "np2 rest rc=$? in $SECONDS s"
grep -E 'PASSED|FAILED|tests from|^\[ ' $OUT/np2_rest_log.txt | tail -24
SECONDS=0
timeout 200 mpiexec.hydra -n 1 $d/bin/test_strategies_cuda --gtest_brief=1 > $OUT/np1_log.txt 2>&1; echo "np1 rc=$? in $SECONDS s"
grep -E 'PASSED|FAILED|tests from' $OUT/np1_log.txt | tail -5
xz -9 $OUT/np1_log.txt
ls -R $OUT | head -20
