#!/usr/bin/env bash
# Installs the Debian packages qkscope builds and tests with.  As root it runs apt-get; otherwise
# it names the missing packages and exits non-zero.  --slurm: also slurm-wlm and munge, for
# `make test-slurm` (a real single-node cluster; .ci/run).
set -euo pipefail
PKGS=(build-essential pkg-config libhdf5-dev hdf5-tools libcriterion-dev libopenblas-openmp-dev
      libcjson-dev zlib1g-dev libdeflate-dev libzstd-dev libinih-dev python3-venv python3-pip
      clang libclang-rt-14-dev  # clang: the libFuzzer harnesses (make fuzz, make test's fuzz-smoke)
      chromium)  # chromium: `make test` renders `qkscope report`'s page headless (tests/test_report.sh)
case "${1:-}" in
    --slurm) PKGS+=(slurm-wlm munge) ;;
    "") ;;
    *) echo "usage: scripts/install-deps.sh [--slurm]" >&2; exit 2 ;;
esac
# cuobjdump + nvdisasm (scripts/check_sass.sh: the fused top-k's SASS must show its tensor-core
# instructions) where nvcc exists without them: NVIDIA's PyPI wheels, pinned, into build/cuda-tools
# (ignored; check_sass.sh looks there).
cuda_tools() {
    local nvcc d
    nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
    [ -n "$nvcc" ] || return 0
    [ -x "$(dirname "$nvcc")/cuobjdump" ] && return 0
    d="$(cd "$(dirname "$0")/.." && pwd)/build/cuda-tools"
    [ -x "$d/cuobjdump/nvidia/cu13/bin/cuobjdump" ] && [ -x "$d/nvdisasm/nvidia/cu13/bin/nvdisasm" ] && return 0
    echo "install-deps: cuobjdump and nvdisasm (PyPI nvidia-cuda-*) into $d"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --target "$d/cuobjdump" nvidia-cuda-cuobjdump==13.5.37 &&
        python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --target "$d/nvdisasm" nvidia-cuda-nvdisasm==13.5.37
}

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && { echo "install-deps: all packages present"; cuda_tools; exit 0; }
if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
else
    echo "install-deps: missing Debian packages (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
fi
cuda_tools
