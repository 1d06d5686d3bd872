#!/usr/bin/env python3
"""SASS of the CUDA kernels without a GPU: per-kernel instruction counts, spills and hot loops.

Compiles a .cu file for one architecture as the build does (default: the wgmma flash kernels,
kernels/cuda/flash_attention_sm90.cu, for sm_90a), disassembles it with nvdisasm (PyPI:
nvidia-cuda-nvdisasm, installed on first use) and prints for each kernel: instructions, spill
instructions (STL/LDL), uniform-datapath and R2UR instructions, HGMMA; and for each loop that
issues tensor-core instructions its length and instruction mix. With --against OTHER.sass it
tells, kernel by kernel, whether the code is instruction for instruction the other build's
(branch labels aside): how a commit shows that its kernels are the ones a device run tested.

Predict before measuring: the twenty-second session chose between descriptor variants here
(results/h200-x1/20261129T1405-flash-bwd-descriptors).

With --check it only compiles (no nvdisasm) and fails, naming the kernel, on any local-memory
spill or serialised wgmma in ptxas's report: the test flash_sm90_ptxas.

usage: sass_report.py [--source FILE.cu] [--arch sm_90a] [--include DIR...] [--save OUT.sass] [--against OTHER.sass]
       sass_report.py --check [--source FILE.cu] [--nvcc NVCC] [--include DIR...]
       sass_report.py --sass FILE.sass [--against OTHER.sass]
"""
import argparse
import collections
import contextlib
import glob
import lzma
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile

from ncu_sass_summary import opcode, uniform_datapath  # the same SASS text and counting rule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_nvdisasm():
    found = shutil.which("nvdisasm")
    if found:
        return found
    for sp in site.getsitepackages() + [site.getusersitepackages()]:
        hits = sorted(glob.glob(os.path.join(sp, "nvidia", "**", "bin", "nvdisasm"), recursive=True))
        if hits:
            return hits[-1]
    return None


def nvdisasm_path():
    path = find_nvdisasm()
    if path:
        return path
    print("nvdisasm not found: pip install nvidia-cuda-nvdisasm", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "nvidia-cuda-nvdisasm"]
    if subprocess.run(cmd).returncode != 0:
        subprocess.run(cmd + ["--break-system-packages"])
    path = find_nvdisasm()
    if not path:
        sys.exit("nvdisasm still not found after pip install nvidia-cuda-nvdisasm")
    os.chmod(path, 0o755)
    return path


def read_text(path):
    try:
        with (lzma.open if path.endswith(".xz") else open)(path, "rt") as f:
            return f.read()
    except (OSError, lzma.LZMAError) as e:
        sys.exit(f"{path}: {e}")


def compile_cubin(source, arch, nvcc, includes, cubin):
    """Compiles source for arch as the build does; returns ptxas's resource report (-v)."""
    virt = "compute_" + arch[len("sm_"):]
    cmd = [nvcc, "-O3", "-DNDEBUG", "-DLSS_FLASH_SM90A=1", f"--generate-code=arch={virt},code=[{arch}]",
           "--expt-relaxed-constexpr", "-lineinfo", "-std=c++20"] + [f"-I{d}" for d in includes] + \
          ["-Xptxas", "-v", "-cubin", "-o", cubin, source]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{' '.join(cmd)}\nfailed (exit {run.returncode}):\n{run.stdout}{run.stderr}")
    return run.stdout + run.stderr


@contextlib.contextmanager
def compiled(args):
    """(ptxas's report, the cubin's path) of args.source, in a folder removed afterwards."""
    if not os.path.exists(args.nvcc):
        sys.exit(f"--nvcc {args.nvcc}: not found (a CUDA toolkit is needed to compile)")
    work = tempfile.mkdtemp()
    try:
        cubin = os.path.join(work, "k.cubin")
        yield compile_cubin(args.source, args.arch, args.nvcc, [os.path.join(ROOT, "src"), ROOT] + args.include,
                            cubin), cubin
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ptxas_findings(report):
    """(kernels, failures) from ptxas's -v report: every kernel compiled, and each local-memory
    spill or serialised wgmma ("Potential Performance Loss", ptxas's C751x infos) with its kernel."""
    kernel, kernels, failures = None, [], []
    for line in report.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            kernel = m.group(1)
            kernels.append(kernel)
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and kernel and (int(m.group(1)) or int(m.group(2))):
            failures.append(f"{demangle(kernel)}: {line.strip()}")
        if "Potential Performance Loss" in line:
            fn = re.search(r"in the function '([^']+)'", line)
            failures.append((demangle(fn.group(1)) + ": " if fn else "") +
                            re.sub(r" in the function '[^']+'", "", line.strip()))
    return kernels, failures


def kernels_of(sass):
    """{mangled name: ([instruction text], {label: index})} from nvdisasm -c output."""
    out, name = {}, None
    for line in sass.splitlines():
        m = re.match(r"^\.text\.(\S+):", line)
        if m:
            name = m.group(1)
            out[name] = ([], {})
            continue
        if name is None:
            continue
        m = re.match(r"^(\.L_x_\d+):", line.strip())
        if m:
            out[name][1][m.group(1)] = len(out[name][0])
            continue
        m = re.match(r"\s+/\*[0-9a-f]+\*/\s+(.*?)\s*;", line)
        if m:
            out[name][0].append(m.group(1))
    return out


def demangle(name):
    """flash_bwd_sm90_kernel<128>: c++filt's name without namespaces, return type or parameters."""
    try:
        full = subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip()
    except OSError:
        full = name
    if full == name:
        return name[:100]
    full = re.sub(r"^void\s+", "", full)
    full = full.replace("(anonymous namespace)::", "")
    full = re.sub(r"\b\w+::", "", full)
    depth = 0
    for i, c in enumerate(full):  # cut at the parameter list: the first '(' outside <>
        depth += (c == "<") - (c == ">")
        if c == "(" and depth == 0:
            return full[:i].replace(" ", "")
    return full.replace(" ", "")


def summary(ins):
    ops = collections.Counter(opcode(i) for i in ins)
    uniform = sum(v for k, v in ops.items() if uniform_datapath(k))
    return ops, uniform


def report(kernels):
    for name, (ins, labels) in sorted(kernels.items(), key=lambda kv: demangle(kv[0])):
        ops, uniform = summary(ins)
        print(f"{demangle(name)}: {len(ins)} instructions, spills {ops['STL'] + ops['LDL']} (STL/LDL), "
              f"uniform+R2UR {uniform}, R2UR {ops['R2UR']}, HGMMA {ops['HGMMA']}")
        loops = []  # (first, last): a branch back to an earlier label, with tensor-core work inside
        for i, text in enumerate(ins):
            m = re.search(r"BRA.*`\((\.L_x_\d+)\)", text)
            if m and labels.get(m.group(1), len(ins)) < i and any("HGMMA" in x for x in ins[labels[m.group(1)]:i + 1]):
                loops.append((labels[m.group(1)], i))
        for first, last in loops:  # innermost only: the per-block bodies
            if any(first <= a and b <= last and (a, b) != (first, last) for a, b in loops):
                continue
            body = ins[first:last + 1]
            bops, buniform = summary(body)
            top = "  ".join(f"{k}:{v}" for k, v in bops.most_common(12))
            print(f"  loop of {len(body)} (HGMMA {bops['HGMMA']}, uniform+R2UR {buniform}, "
                  f"spills {bops['STL'] + bops['LDL']}): {top}")


def normalised(ins):
    return [re.sub(r"\.L_x_\d+", "L", i) for i in ins]


def check(report, args):
    """--check: ptxas's report (compiled here unless given) with no spill and no serialised wgmma."""
    if report is None:
        with compiled(args) as (report, _):
            pass
    kernels, failures = ptxas_findings(report)
    if not kernels:
        print(report)
        sys.exit("FAIL: no 'Compiling entry function' lines in ptxas's report: was -Xptxas -v honoured?")
    for k in kernels:
        print("checked", demangle(k))
    if failures:
        print("\n".join("FAIL: " + f for f in failures))
        sys.exit(1)
    print(f"ok: {len(kernels)} kernels, no spills, no serialised wgmma")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=os.path.join(ROOT, "kernels/cuda/flash_attention_sm90.cu"),
                    help="the .cu file (default: kernels/cuda/flash_attention_sm90.cu)")
    ap.add_argument("--arch", default="sm_90a", help="real architecture (default sm_90a)")
    ap.add_argument("--nvcc", default=shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc", help="CUDA compiler")
    ap.add_argument("--include", nargs="+", default=["/usr/local/cuda/include"],
                    help="include folders beside src/ and the repository root (default: /usr/local/cuda/include)")
    ap.add_argument("--check", action="store_true",
                    help="compile only (no nvdisasm) and fail, naming the kernel, on any spill or serialised "
                         "wgmma in ptxas's report (the test flash_sm90_ptxas)")
    ap.add_argument("--sass", help="read this nvdisasm -c output (.sass or .sass.xz) instead of compiling")
    ap.add_argument("--save", help="write the disassembly here (for a later --against)")
    ap.add_argument("--against", help="compare kernel by kernel with this saved disassembly (.sass or .sass.xz)")
    ap.add_argument("--ptxas", help="with --check: read this saved ptxas -v report instead of compiling")
    args = ap.parse_args()
    if args.check:
        check(read_text(args.ptxas) if args.ptxas else None, args)
        return
    if args.sass:
        sass = read_text(args.sass)
    else:
        with compiled(args) as (ptxas, cubin):
            for f in ptxas_findings(ptxas)[1]:
                print("ptxas:", f)
            dis = subprocess.run([nvdisasm_path(), "-c", cubin], capture_output=True, text=True)
            if dis.returncode != 0:
                sys.exit(f"nvdisasm failed on {cubin}: {dis.stderr}")
            sass = dis.stdout
    if args.save:
        with open(args.save, "w") as f:
            f.write(sass)
    kernels = kernels_of(sass)
    if not kernels:
        sys.exit("no kernels in the disassembly")
    report(kernels)
    if args.against:
        other = kernels_of(read_text(args.against))
        print(f"\nagainst {args.against}:")
        for name, (ins, _) in sorted(kernels.items(), key=lambda kv: demangle(kv[0])):
            if name not in other:
                print(f"  {demangle(name)}: not in the other build")
            elif normalised(ins) == normalised(other[name][0]):
                print(f"  {demangle(name)}: identical")
            else:
                print(f"  {demangle(name)}: differs ({len(ins)} against {len(other[name][0])} instructions)")


if __name__ == "__main__":
    main()
