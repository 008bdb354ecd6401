#!/usr/bin/env bash
# bench/gpu_device.sh: run bench/gpu_check.py on a lent GPU machine (see ../.library/device/README.md).
#
#   bash bench/gpu_device.sh prepare   # here: fetch the faiss-cpu wheel (the device image has no faiss) into .whl/
#   bash bench/gpu_device.sh run       # there: the device `run` command, with carry [".whl"], timeout_s 540
#
# `run` installs the carried wheels into /tmp/site, then writes $OUT/gpu_check.json and .md (quick smoke
# test first, so a broken setup fails in seconds, not minutes). Copy them into bench/results/ and the
# figures into bench/RESULTS.md's GPU section. Exit status is gpu_check.py's: 0 passed, 1 an equivalence
# check failed, 2 no usable GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  prepare)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl "faiss-cpu>=1.8"
    ;;
  run)
    out="${OUT:-/tmp/gpu-out}"
    mkdir -p "$out"
    if ls .whl/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
      export PYTHONPATH=/tmp/site
    fi
    nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv > "$out/nvidia-smi.csv" || true
    python3 bench/gpu_check.py --out "$out/gpu_check_quick" --quick
    python3 bench/gpu_check.py --out "$out/gpu_check"
    ;;
  *)
    echo "usage: bash bench/gpu_device.sh prepare|run" >&2
    exit 64
    ;;
esac
