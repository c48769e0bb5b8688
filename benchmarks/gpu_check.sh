#!/usr/bin/env bash
# The GPU check (<= ~5 min on one GPU): AnomalyCLIP predict img/s and train step/s at 518 px (fp32 and AMP),
# InCTRL, VAND and WinCLIP img/s at full size with random weights, and `course train --workers 1` on two
# tiny runs through CUDA; prints one table (JSON in build/bench/gpu_check.json).
# Runs from the checkout with the machine's own torch: no `pip install -e .` (which pins torch); packages the
# machine lacks (open_clip_torch, submitit, ...) are installed from wheels given in $WHEELS, without deps.
#   benchmarks/gpu_check.sh                       # on the GPU machine
#   benchmarks/gpu_check.sh --device cpu --quick  # the same script on a CPU with tiny backbones (a check)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ -n "${WHEELS:-}" ]; then
  "$PYTHON" -m pip install --quiet --no-deps --no-index "$WHEELS"/*.whl
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
