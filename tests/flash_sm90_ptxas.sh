#!/usr/bin/env bash
# The wgmma flash-attention kernels (kernels/cuda/flash_attention_sm90.cu) compiled for sm_90a as
# the build compiles them, with ptxas's resource report: fails, naming the kernel, if any kernel
# spills to local memory or if ptxas serialises its wgmma instructions ("Potential Performance
# Loss"). Both are silent slow-downs that no correctness test sees (results/h200-x1/
# 20261129T1405-flash-bwd-descriptors: 10 spill instructions in the backward's loop cost 1-1.6%).
# usage: flash_sm90_ptxas.sh NVCC SOURCE_ROOT [INCLUDE_DIR...]
set -uo pipefail
nvcc=$1 root=$2
shift 2
includes=(-I"$root/src" -I"$root")
for d in "$@"; do includes+=(-I"$d"); done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$nvcc" -O3 -DNDEBUG -DLSS_FLASH_SM90A=1 --generate-code=arch=compute_90a,code=[sm_90a] \
  --expt-relaxed-constexpr -lineinfo -std=c++20 "${includes[@]}" -Xptxas -v -cubin -o "$work/flash.cubin" \
  "$root/kernels/cuda/flash_attention_sm90.cu" >"$work/ptxas.txt" 2>&1
rc=$?
if [ $rc -ne 0 ]; then
  cat "$work/ptxas.txt"
  echo "FAIL: $nvcc could not compile kernels/cuda/flash_attention_sm90.cu for sm_90a (exit $rc)"
  exit 1
fi
python3 - "$work/ptxas.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def short(k):
    # flash_bwd_sm90_kernel<128>: the kernel and its template arguments, from the mangled name
    m = re.search(r"\d+((?:flash_fwd|flash_bwd|dq_convert)_sm90_kernel)I(.*?)EEv", k)
    if not m:
        return k
    return m.group(1) + "<" + ",".join(re.findall(r"Li(\d+)E", m.group(2) + "E")) + ">"
kernel, kernels, failures = None, [], []
for line in text.splitlines():
    m = re.search(r"Compiling entry function '([^']+)'", line)
    if m:
        kernel = m.group(1)
        kernels.append(kernel)
        continue
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m and kernel and (int(m.group(1)) or int(m.group(2))):
        failures.append(f"{short(kernel)}: {line.strip()}")
    if "Potential Performance Loss" in line:  # ptxas's C751x infos: serialised wgmma
        fn = re.search(r"in the function '([^']+)'", line)
        failures.append((short(fn.group(1)) + ": " if fn else "") + re.sub(r" in the function '[^']+'", "", line.strip()))
if not kernels:
    print(text)
    sys.exit("FAIL: no 'Compiling entry function' lines in ptxas's report: was -Xptxas -v honoured?")
for k in kernels:
    print("checked", short(k))
if failures:
    print("\n".join("FAIL: " + f for f in failures))
    sys.exit(1)
print(f"ok: {len(kernels)} kernels, no spills, no serialised wgmma")
PY
