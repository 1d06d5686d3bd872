#!/usr/bin/env bash
# Installs what lssbench needs on a fresh Debian/Ubuntu machine and builds it into build/.
# Idempotent: packages already present are left as they are; the build is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(build-essential cmake mpich libmpich-dev nlohmann-json3-dev libfmt-dev libbenchmark-dev
          libgtest-dev libopenblas-dev python3-matplotlib python3-pil xz-utils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi
python3 -m pip --version >/dev/null 2>&1 || { $([ "$(id -u)" -eq 0 ] || echo sudo) apt-get install -y -qq python3-pip; }
# cudnn-frontend's C++ headers and NVML's header (for the CUDA build; harmless without CUDA) and matplotlib (with Pillow) for the
# charts, for the python3 on PATH (which may not be the system one that apt serves).
pip_install() { python3 -m pip install -q "$@" 2>/dev/null || python3 -m pip install -q --break-system-packages "$@"; }
pip_install nvidia-cudnn-frontend nvidia-nvml-dev-cu12
python3 -c "import matplotlib" 2>/dev/null || pip_install matplotlib
python3 -c "import PIL" 2>/dev/null || pip_install pillow  # plots/figsave.py's palette PNGs (matplotlib's own dependency)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)"
