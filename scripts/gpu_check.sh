#!/usr/bin/env bash
# One prepared GPU check for a lent device (the `device` tool runs it in the repository root with $OUT set).
# Each step has its own time limit and writes its log under $OUT; a failing step does not stop the others.
#   1. install detspec (no deps: the device has torch, torchvision, triton, pytest, hypothesis, pytest-benchmark)
#   2. the gpu-marked tests (Triton NMS and ROIAlign kernels on CUDA, CUDA dispatch, sync-free paths)
#   3. the conformance suite on CUDA for reference and fast (clause report as JSON)
#   4. the benchmarks on CUDA (geometry, roi, rcnn): JSON, ratio table and plot under $OUT/bench
# Record the figures, with the card's name (in $OUT/nvidia-smi.txt and the bench JSON), in BENCHMARKS.md.
set -uo pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
step() {  # step NAME SECONDS CMD...
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name: rc=$? in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
step install 120 $PY -m pip install --no-deps --no-build-isolation -e .
step gpu-tests 240 $PY -m pytest -q -m gpu tests -p no:cacheprovider -o addopts=
step check-cuda 300 $PY -m detspec.cli check --device cuda --workers 4 --report "$OUT/clauses-cuda.json"
step bench-cuda 420 $PY -m detspec.bench --device cuda --suite geometry --suite roi --suite rcnn --out "$OUT/bench" \
    --markdown
tail -n 40 "$OUT"/*.log > "$OUT/tails.txt" 2>/dev/null
cat "$OUT/summary.txt"
