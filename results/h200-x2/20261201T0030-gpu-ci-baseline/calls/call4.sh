set -u
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm,driver_version --format=csv,noheader
bash scripts/gpu_run.sh --unpack-only > /dev/null 2>&1
d=$PWD/.device
export PATH=$d/mpich/bin:$PATH LD_LIBRARY_PATH=$d/lib:$d/mpich/lib:${LD_LIBRARY_PATH:-}
# 246c5dd on one GPU (the 2-GPU kind was no longer lent): the Session's wait for its ranks before
# the NCCL grid; an lss and a megatron_sp step at 16K as in gpu-strong, and the CUDA step test's
# distributed cases on one rank.
m="--layers 4 --width 2048 --heads 16 --batch 1 --dtype bf16 --backend cuda --seq 16K --warmup 2 --iters 6 --no-measure-peak --no-bound"
mpiexec.hydra -n 1 $d/bin/lssbench run --strategy lss --zigzag $m --out $OUT/lss_w1_T16K.json 2>&1 | grep -E 'step median|status|loss \(first'
mpiexec.hydra -n 1 $d/bin/lssbench run --strategy megatron_sp $m --out $OUT/megatron_sp_w1_T16K.json 2>&1 | grep -E 'step median|status|loss \(first'
SECONDS=0
timeout 200 mpiexec.hydra -n 1 $d/bin/test_strategies_cuda --gtest_brief=1 --gtest_filter='*lss*:*megatron*' > $OUT/np1_log.txt 2>&1; echo "np1 lss+megatron_sp rc=$? in $SECONDS s"
grep -E 'PASSED|FAILED|tests from' $OUT/np1_log.txt | tail -5
xz -9 $OUT/np1_log.txt
