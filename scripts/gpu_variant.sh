#!/usr/bin/env bash
# Packs a variant build for an A/B of kernels on one card (gpu_perf.sh's ab-kernel section) into
# .device/NAME.tar.xz, beside the base bundle (gpu_bundle.sh). Run from the repository root on this
# machine with the variant's change in the working tree and built:
#   git apply change.diff && cmake --build build-cuda && BUILD_DIR=build-cuda scripts/gpu_variant.sh n1
#   git checkout -- . && cmake --build build-cuda && BUILD_DIR=build-cuda scripts/gpu_bundle.sh
#   device tool: run(command="bash scripts/gpu_perf.sh ab-kernel", carry=[".device"])
# What goes in: the named binaries of BUILD_DIR/bin (default bench_attention lssbench
# test_cuda_attention; any of bench_attention bench_kernels lssbench test_cuda_attention
# test_cuda_kernels: ab-kernel runs what a variant carries), debug sections stripped (they load the
# base bundle's libraries), and change.diff, the working tree's diff against HEAD, so the variant's
# change comes back with its results (ab-kernel copies it into the points).
#   usage: gpu_variant.sh NAME [BINARY...]
# NAME: lower-case letters and digits, starting with a letter; not "base" or "bundle".
set -euo pipefail

die() { echo "gpu_variant.sh: ERROR: $*" >&2; exit 1; }

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${BUILD_DIR:-build}
name=${1:-}
shift || true
[[ $name =~ ^[a-z][a-z0-9]*$ ]] || die "variant name '$name': expected lower-case letters and digits, starting with a letter (usage: gpu_variant.sh NAME)"
[[ $name != base && $name != bundle ]] || die "variant name '$name' is reserved (the base build is 'base', its archive 'bundle')"
for tool in strip tar xz git cmake ldd; do
  command -v "$tool" >/dev/null || die "'$tool' is needed and not installed"
done
bins=("$@")
((${#bins[@]})) || bins=(bench_attention lssbench test_cuda_attention)
for b in "${bins[@]}"; do
  case $b in
    bench_attention | bench_kernels | lssbench | test_cuda_attention | test_cuda_kernels) ;;
    *) die "binary '$b': ab-kernel runs bench_attention, bench_kernels, lssbench, test_cuda_attention and test_cuda_kernels" ;;
  esac
  [[ -x $build/bin/$b ]] || die "$build/bin/$b not found: build the variant first (cmake --build $build)"
done
# A CPU-only build would run on the GPU machine without touching a GPU: every binary must link CUDA.
for b in "${bins[@]}"; do
  ldd "$build/bin/$b" | grep 'libcudart\|libcuda\.so' >/dev/null ||
    die "$build/bin/$b does not link CUDA: configure with CUDA (cmake -S . -B $build -DCMAKE_CUDA_ARCHITECTURES=90a)"
done

stage=$(mktemp -d "${TMPDIR:-/tmp}/lss-gpu-variant.XXXXXX")
trap 'rm -rf "$stage"' EXIT
# shellcheck source=build_stamp.sh
source "$root/scripts/build_stamp.sh"
check_build_stamp "$build" "$root" "$stage"
git diff HEAD >"$stage/change.diff"
[[ -s $stage/change.diff ]] || echo "gpu_variant.sh: note: the working tree equals HEAD, so '$name' is the base's code"
for b in "${bins[@]}"; do cp -L "$build/bin/$b" "$stage/$b"; done
# Debug sections only, as gpu_bundle.sh does: a crash still names functions.
strip --strip-debug "${bins[@]/#/$stage/}"
mkdir -p .device
tar -C "$stage" -cf - "${bins[@]}" change.diff | xz -T1 -6 >".device/$name.tar.xz.tmp"
mv ".device/$name.tar.xz.tmp" ".device/$name.tar.xz"
echo "wrote .device/$name.tar.xz ($(du -h ".device/$name.tar.xz" | cut -f1); the change: $(grep -c '^[+-][^+-]' "$stage/change.diff" || true) lines)"
