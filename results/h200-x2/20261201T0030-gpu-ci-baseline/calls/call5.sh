set -u
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm,driver_version --format=csv,noheader
bash scripts/gpu_run.sh --unpack-only > /dev/null 2>&1
d=$PWD/.device
export PATH=$d/mpich/bin:$PATH LD_LIBRARY_PATH=$d/lib:$d/mpich/lib:${LD_LIBRARY_PATH:-}
# The CUDA step test on one rank before (347c527, _old) and after 246c5dd, alternating on one
# machine: call 4's 2.5 s a test against call 3's 2.2 s came from two machines.
F='*causal_cudnn_zigzag:*causal_flash_zigzag:*zigzag_sharded:*megatron_sp_bf16_causal_cudnn:*serial_bf16_causal_cudnn:*lss_fp32_causal_flash'
for round in 1 2; do
  for b in test_strategies_cuda_old test_strategies_cuda; do
    SECONDS=0
    timeout 60 mpiexec.hydra -n 1 $d/bin/$b --gtest_filter="$F" > $OUT/${b}_r$round.txt 2>&1
    echo "$b round $round rc=$? wall $SECONDS s, gtest $(grep -E 'tests from 1 test suite ran' $OUT/${b}_r$round.txt | grep -oE '\([0-9]+ ms')"
  done
done
grep -hE '^\[       OK' $OUT/*_r1.txt | sed -E 's/.*Reference\///' | head -20
