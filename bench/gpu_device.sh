#!/usr/bin/env bash
# bench/gpu_device.sh: run bench/gpu_check.py on a lent GPU machine (see ../.library/device/README.md).
#
#   bash bench/gpu_device.sh prepare   # here: into .whl/, the faiss-cpu and duckdb wheels (the device image
#                                      # has neither) and a wheel of this checkout
#   bash bench/gpu_device.sh run       # there: the device `run` command, with carry [".whl", ".realvec"],
#                                      # timeout_s 420 (it took 156 s on an H200, start not counted)
#
# `run` installs the carried wheels into /tmp/site, then, each step under its own time limit and each
# writing under $OUT: a quick gpu_check (a broken setup fails in seconds), the GPU tests (pytest of
# tests/test_kernels.py and tests/test_vector_gpu.py, from /tmp so the installed wheel is what is tested),
# bench/gpu_store.py, and the full gpu_check. Copy the results into bench/results/ and the figures into
# bench/RESULTS.md's GPU section. Exit status: the number of steps that failed.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  prepare)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl "faiss-cpu>=1.8" "duckdb>=1.1"
    # real embeddings for gpu_check's "real" data set, when the caches exist (python bench/embed_cache.py)
    grep -qx '/.realvec/' .git/info/exclude 2>/dev/null || echo '/.realvec/' >> .git/info/exclude
    mkdir -p .realvec
    for name in 2wiki_passages multihop_facts multihop_questions; do
      cp "$HOME/.cache/knowledge-bench/$name.npy" .realvec/ 2>/dev/null || echo "no $name cache: no real set" >&2
    done
    rm -f .whl/knowledge-*.whl
    python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl .
    ;;
  run)
    out="${OUT:-/tmp/gpu-out}"
    repo="$PWD"
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv || true
    failed=0
    step() {  # step NAME SECONDS COMMAND...: run, log to $out/NAME.log, count a failure
      local name="$1" limit="$2"; shift 2
      echo "== $name (limit ${limit} s)"
      if ! (cd /tmp && timeout "$limit" "$@") > "$out/$name.log" 2>&1; then
        echo "!! $name failed"; failed=$((failed + 1))
      fi
      tail -n 40 "$out/$name.log"
    }
    step quick 90 python3 "$repo/bench/gpu_check.py" --out /tmp/gpu_check_quick --quick
    step pytest 150 python3 -m pytest -q -p no:cacheprovider -rs "$repo/tests/test_kernels.py" \
      "$repo/tests/test_vector_gpu.py"
    step store 150 python3 "$repo/bench/gpu_store.py" --out "$out/gpu_store" --queries 50
    real=()
    if [ -f .realvec/multihop_questions.npy ]; then
      real=(--real-base "$repo/.realvec/2wiki_passages.npy,$repo/.realvec/multihop_facts.npy"
            --real-queries "$repo/.realvec/multihop_questions.npy")
    fi
    step full 240 python3 "$repo/bench/gpu_check.py" --out "$out/gpu_check" "${real[@]}"
    exit "$failed"
    ;;
  *)
    echo "usage: bash bench/gpu_device.sh prepare|run" >&2
    exit 64
    ;;
esac
