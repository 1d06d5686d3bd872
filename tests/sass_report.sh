#!/usr/bin/env bash
# scripts/sass_report.py on two real disassemblies (nvdisasm of the flash kernels of the
# twenty-second session's probe builds u1 and u2, results/h200-x1/20261129T1405-flash-bwd-descriptors)
# against counts that a separate script took from the same files (that folder's NOTES.md): per-kernel
# totals, spill instructions, the backward's loop, and the kernel-by-kernel comparison; inputs it
# must refuse; and --check's verdicts on saved ptxas reports. No compiler or GPU needed.
# usage: sass_report.sh SOURCE_ROOT
set -uo pipefail
root=$1
tool=$root/scripts/sass_report.py
dir=$root/results/h200-x1/20261129T1405-flash-bwd-descriptors
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0
expect() {  # FILE PATTERN
  grep -qF -- "$2" "$1" || { echo "FAIL: $(basename "$1") lacks: $2"; fail=1; }
}
python3 "$tool" --sass "$dir/u1.sass.xz" --against "$dir/u2.sass.xz" >"$work/u1.txt" 2>&1 ||
  { cat "$work/u1.txt"; echo "FAIL: exit status on u1"; exit 1; }
python3 "$tool" --sass "$dir/u2.sass.xz" >"$work/u2.txt" 2>&1 || { cat "$work/u2.txt"; echo "FAIL: exit status on u2"; exit 1; }
cat "$work/u1.txt" "$work/u2.txt"
expect "$work/u1.txt" "flash_bwd_sm90_kernel<128>: 2680 instructions, spills 0 (STL/LDL)"
expect "$work/u1.txt" "loop of 705 (HGMMA 32"
expect "$work/u1.txt" "flash_fwd_sm90_kernel<FwdSm90<128,3,2>>: 3104 instructions"
expect "$work/u1.txt" "flash_bwd_sm90_kernel<128>: differs (2680 against 2464 instructions)"
expect "$work/u1.txt" "dq_convert_sm90_kernel<64>: identical"
expect "$work/u2.txt" "flash_bwd_sm90_kernel<128>: 2464 instructions, spills 18 (STL/LDL)"
expect "$work/u2.txt" "loop of 650 (HGMMA 32"
expect "$work/u2.txt" "spills 10):"
: >"$work/empty.sass"
if python3 "$tool" --sass "$work/empty.sass" >"$work/bad.txt" 2>&1; then echo "FAIL: accepted an empty disassembly"; fail=1; fi
expect "$work/bad.txt" "no kernels in the disassembly"
if python3 "$tool" --sass "$work/absent.sass" >"$work/bad.txt" 2>&1; then echo "FAIL: accepted a missing file"; fail=1; fi
expect "$work/bad.txt" "absent.sass: [Errno 2]"
# --check (the test flash_sm90_ptxas) on saved ptxas -v reports: a clean one passes; a spill and a
# serialised wgmma (ptxas's wording, as in public reports of C7515) fail, each naming its kernel.
bwd="_ZN3lss4cuda12flash_detail56_GLOBAL__N__53d30644_23_flash_attention_sm90_cu_d2c609c221flash_bwd_sm90_kernelILi128EEEvNS1_6ParamsENS2_7BwdMapsE"
printf "ptxas info    : Compiling entry function '%s' for 'sm_90a'\n    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n" "$bwd" >"$work/clean.txt"
python3 "$tool" --check --ptxas "$work/clean.txt" >"$work/check.txt" 2>&1 || { echo "FAIL: --check refused a clean report"; fail=1; }
expect "$work/check.txt" "ok: 1 kernels, no spills, no serialised wgmma"
printf "ptxas info    : Compiling entry function '%s' for 'sm_90a'\n    32 bytes stack frame, 32 bytes spill stores, 40 bytes spill loads\n" "$bwd" >"$work/spill.txt"
if python3 "$tool" --check --ptxas "$work/spill.txt" >"$work/check.txt" 2>&1; then echo "FAIL: --check passed a spill"; fail=1; fi
expect "$work/check.txt" "FAIL: flash_bwd_sm90_kernel<128>: 32 bytes stack frame, 32 bytes spill stores"
printf "ptxas info    : Compiling entry function '%s' for 'sm_90a'\nptxas info    : (C7515) Potential Performance Loss: wgmma.mma_async instructions are serialized due to non wgmma instructions defining accumulator registers of a wgmma between start and end of the pipeline stage in the function '%s'\n    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n" "$bwd" "$bwd" >"$work/serial.txt"
if python3 "$tool" --check --ptxas "$work/serial.txt" >"$work/check.txt" 2>&1; then echo "FAIL: --check passed serialised wgmma"; fail=1; fi
expect "$work/check.txt" "FAIL: flash_bwd_sm90_kernel<128>: ptxas info    : (C7515) Potential Performance Loss"
echo "no entry functions" >"$work/empty.txt"
if python3 "$tool" --check --ptxas "$work/empty.txt" >"$work/check.txt" 2>&1; then echo "FAIL: --check passed a report without kernels"; fail=1; fi
expect "$work/check.txt" "no 'Compiling entry function' lines"
[ $fail -eq 0 ] && echo ok
exit $fail
