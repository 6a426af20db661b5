#!/usr/bin/env bash
# One prepared GPU check for a lent device (the `device` tool runs it in the repository root with $OUT set).
# The whole check fits one device call of about 540 s (GPU_CHECK_SECONDS): each step has its own time limit,
# cut to what is left of the total, and writes its log under $OUT; a failing step does not stop the others.
#   1. install detspec (no deps: the device has torch, torchvision, triton, pytest, hypothesis)       <= 90 s
#   2. the gpu-marked tests (Triton NMS and ROIAlign kernels on CUDA, CUDA dispatch, sync-free paths) <= 120 s
#   3. the figures: scripts/gpu_figures.py (fast vs torchvision: Faster R-CNN, MViT, ROIAlign, NMS; MViTv2-T
#      backbone vs reference; CUDA graph) -> $OUT/figures.json, $OUT/figures.md                      <= 200 s
#   4. the conformance suite on CUDA for reference and fast (clause report as JSON)                   <= 150 s
# The figures replace the former pytest-benchmark step (detspec bench --device cuda); run that separately.
# Record the figures, with the card's name (in $OUT/nvidia-smi.txt and figures.json), in BENCHMARKS.md.
set -uo pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
TOTAL=${GPU_CHECK_SECONDS:-540}
step() {  # step NAME SECONDS CMD...: at most SECONDS, and never past TOTAL (15 s kept for the summary)
    local name=$1 limit=$2; shift 2
    local left=$((TOTAL - SECONDS - 15))
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    if [ "$limit" -lt 10 ]; then
        echo "$name: skipped (${left} s left of ${TOTAL} s)" | tee -a "$OUT/summary.txt"
        return
    fi
    local start=$SECONDS
    timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name: rc=$? in $((SECONDS - start)) s (limit $limit s)" | tee -a "$OUT/summary.txt"
}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
step install 90 $PY -m pip install --no-deps --no-build-isolation -e .
step gpu-tests 120 $PY -m pytest -q -m gpu tests -p no:cacheprovider -o addopts=
step figures 200 $PY scripts/gpu_figures.py --out "$OUT" --budget 165
step check-cuda 150 $PY -m detspec.cli check --device cuda --workers 4 --report "$OUT/clauses-cuda.json"
tail -n 40 "$OUT"/*.log > "$OUT/tails.txt" 2>/dev/null
if [ -f "$OUT/figures.md" ]; then  # written when the figures step completes
    cat "$OUT/figures.md"
else  # it was cut short: the table of what figures.json holds so far
    timeout 10 $PY scripts/gpu_figures.py --table "$OUT/figures.json" 2>&1
fi
cat "$OUT/summary.txt"
