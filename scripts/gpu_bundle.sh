#!/usr/bin/env bash
# Packs what a GPU run needs into .device/ (ignored by git), to be sent with the device tool's
# carry: [".device"], then run there with scripts/gpu_run.sh.
#
# Run from the repository root on this machine after a CUDA build in build/ (or BUILD_DIR), e.g.
#   cmake -S . -B build -DCMAKE_CUDA_ARCHITECTURES=90a && make -C build -j2 && scripts/gpu_bundle.sh
#
# What goes in: the binaries lssbench and test_* of build/bin; the MPICH runtime
# (/work/shared/device/bundle-mpich.sh: the GPU machine has Open MPI only); and every shared
# library those binaries (and the MPICH launcher) load per ldd that the GPU machine lacks, i.e. all
# but glibc, libstdc++/libgcc_s and the CUDA driver/runtime, cuBLAS(Lt), NCCL and cuDNN, which it
# has as system libraries (CUDA 13.0, NCCL 2.28.3, cuDNN 9.14; ours are only newer patch levels).
# cuDNN is not carried: its engine libraries alone are several hundred MB.
#
# Why an archive: uncompressed, MPICH (~45 MB) plus OpenBLAS (~36 MB) alone exceed the 64 MiB that
# may travel, while xz brings everything to roughly a quarter. So the tree is staged in a temporary
# folder and .device/ receives one file, bundle.tar.xz, plus MANIFEST.txt (what is inside, for
# people); gpu_run.sh unpacks it into .device/ on the GPU machine.
set -euo pipefail

die() { echo "gpu_bundle.sh: ERROR: $*" >&2; exit 1; }
trap 'echo "gpu_bundle.sh: ERROR: line $LINENO failed: $BASH_COMMAND" >&2' ERR

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${BUILD_DIR:-build}
mpich_script=${MPICH_BUNDLE_SCRIPT:-/work/shared/device/bundle-mpich.sh}
# What travels is counted as a tar archive of it (a 512-byte header per file and each file padded to
# 512 bytes): the device tool refused 64.3 MiB counted that way while the files' own bytes summed to
# 62.0. LSS_BUNDLE_LIMIT_MIB (at most 64) sets a lower limit, e.g. to keep room for files a call adds.
limit_mib=${LSS_BUNDLE_LIMIT_MIB:-64}
[[ $limit_mib =~ ^[0-9]+$ ]] && ((limit_mib <= 64)) || die "LSS_BUNDLE_LIMIT_MIB=$limit_mib: want a whole number of MiB, at most 64"

[[ -d $build/bin ]] || die "$build/bin not found: build first (cmake -S . -B $build -DCMAKE_CUDA_ARCHITECTURES=90a && make -C $build)"
[[ -x $build/bin/lssbench ]] || die "$build/bin/lssbench not found: the build is incomplete"
[[ -x $mpich_script ]] || die "$mpich_script not found or not executable (it copies the MPICH runtime)"
for tool in ldd strip tar xz; do
  command -v "$tool" >/dev/null || die "'$tool' is needed and not installed"
done
# A CPU-only build would run on the GPU machine without ever touching a GPU: refuse it.
if ! ldd "$build/bin/lssbench" | grep 'libnccl\.so' >/dev/null; then  # not -q: an early exit would break the pipe under pipefail
  die "$build/bin/lssbench does not link NCCL: configure with CUDA (cmake -S . -B $build -DCMAKE_CUDA_ARCHITECTURES=90a)"
fi

stage=$(mktemp -d "${TMPDIR:-/tmp}/lss-gpu-bundle.XXXXXX")
trap 'rm -rf "$stage"' EXIT
# Every result names the commit its binary was stamped with at build time (build_stamp.sh).
# shellcheck source=build_stamp.sh
source "$root/scripts/build_stamp.sh"
check_build_stamp "$build" "$root" "$stage"
mkdir -p "$stage/bin" "$stage/lib"

# ---- binaries ----
bins=()
for f in "$build"/bin/lssbench "$build"/bin/test_* "$build"/bin/bench_*; do
  [[ -f $f && -x $f ]] || continue
  cp -L "$f" "$stage/bin/"
  bins+=("$stage/bin/$(basename "$f")")
done
skipped=$(find "$build/bin" -maxdepth 1 -type f -perm -u+x ! -name lssbench ! -name 'test_*' ! -name 'bench_*' -printf '%f ' 2>/dev/null || true)
[[ -n $skipped ]] && echo "not carried (not lssbench or test_*): $skipped"
# Debug sections only: the symbol tables stay, so that a crash there still names functions.
strip --strip-debug "${bins[@]}"
echo "binaries: ${bins[*]##*/}"

# ---- MPICH runtime ----
"$mpich_script" "$stage/mpich" >/dev/null || die "$mpich_script failed"

# ---- shared libraries the GPU machine lacks ----
# Names the GPU machine provides itself: glibc's libraries, the GCC runtime (Ubuntu 24.04's is
# newer than Debian 12's, so it serves our binaries), and the NVIDIA stack.
provided='^(ld-linux.*|linux-vdso.*|libc|libm|libmvec|libdl|libpthread|librt|libresolv|libutil|libanl|libnsl|libnss_.*|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt|libnccl|libcudnn.*|libnvrtc.*|libnvJitLink|libnvidia-.*)\.so'
declare -A have=()
for f in "$stage"/mpich/lib/*; do have[$(basename "$f")]=1; done
missing=()
copied=()
for b in "${bins[@]}" "$stage"/mpich/bin/*; do
  while read -r name arrow path _; do
    [[ $arrow == "=>" ]] || continue
    [[ $name =~ $provided ]] && continue
    [[ -n ${have[$name]:-} ]] && continue
    if [[ $path == not ]]; then
      missing+=("$name (needed by $(basename "$b"))")
      continue
    fi
    cp -L "$path" "$stage/lib/$name"
    have[$name]=1
    copied+=("$name")
  done < <(ldd "$b")
done
((${#missing[@]} == 0)) || die "libraries ldd cannot find here: ${missing[*]}"
if ((${#copied[@]})); then
  strip --strip-unneeded "$stage"/lib/* 2>/dev/null || true
fi
echo "libraries: ${copied[*]:-none}"

# ---- the archive ----
header_version() {  # FILE MAJOR MINOR PATCH: "X.Y.Z" from the #defines, "?" where absent
  local file=$1 v=() n
  shift
  for n in "$@"; do v+=("$(awk -v n="$n" '$1 == "#define" && $2 == n { print $3; exit }' "$file" 2>/dev/null)"); done
  local IFS=.
  [[ -n ${v[0]} ]] && echo "${v[*]}" || echo "?"
}
{
  echo "lssbench GPU bundle, made $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  if commit=$(git rev-parse --short=12 HEAD 2>/dev/null); then
    git diff --quiet HEAD 2>/dev/null || commit+=" (working tree modified)"
  else
    commit=unknown
  fi
  echo "commit $commit"
  echo "built against: NCCL $(header_version /usr/local/cuda/include/nccl.h NCCL_MAJOR NCCL_MINOR NCCL_PATCH)," \
    "cuDNN $(header_version /usr/local/cuda/include/cudnn_version.h CUDNN_MAJOR CUDNN_MINOR CUDNN_PATCHLEVEL)"
  echo
  (cd "$stage" && find . -type f -printf '%10s  %P\n' | sort -k2)
} >"$stage/MANIFEST.txt"

mkdir -p .device
rm -rf .device/bin .device/lib .device/mpich .device/bundle.tar.xz .device/MANIFEST.txt
echo "compressing (xz -9e, one thread)..."
# -9e: 1.8 MiB under -6 for lssbench and test_strategies_cuda, room the travel limit needs.
tar -C "$stage" -cf - MANIFEST.txt bin lib mpich | xz -T1 -9e >.device/bundle.tar.xz
cp "$stage/MANIFEST.txt" .device/MANIFEST.txt

# ---- size check: what travels is the working tree (tracked and untracked-not-ignored files) plus .device ----
unpacked=$(du -sb "$stage" | awk '{print $1}')
# shellcheck source=travel_size.sh
source "$root/scripts/travel_size.sh"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  total=$(travel_bytes .device)
  tree_bytes=$(travel_bytes)  # with shared/, where the checkout has one
else
  echo "warning: $root is not a git working tree; its size is not counted"
  total=$(find .device -type f -print0 | tar_bytes)
  tree_bytes=0
fi
device_bytes=$((total - tree_bytes))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "unpacked bundle: $(mib "$unpacked"); .device: $(mib "$device_bytes"); working tree: $(mib "$tree_bytes")"
echo "TOTAL that travels: $(mib "$total") (limit here ${limit_mib} MiB, device tool's 64 MiB)"
if ((total > limit_mib * 1048576)); then
  die "over ${limit_mib} MiB: the device tool would refuse it. Carry fewer binaries (build only those the run needs) or fewer libraries."
fi
echo "ready: run with carry [\".device\"] and command 'bash scripts/gpu_run.sh'"
