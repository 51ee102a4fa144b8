#!/usr/bin/env bash
# The CPU suite (sdrt bench's code, two models): the tiny demo model at 128x128, 20 steps, batch 1/2/4, and a
# full-size SD 1.5 architecture with random weights at 256x256, 4 steps, batch 1; every sdrt backend (onnxruntime,
# openvino, torch; tensorrt listed as skipped) against diffusers fp32, alternating run by run. The last run took
# 12.4 minutes on the 2-core machine before openvino joined (it adds a contender: expect about 15) once
# models/sd15-random and artifacts/sd15-random-cpu exist; a first run also writes the model (4 GB) and exports it.
# Writes benchmarks/results/<machine>.{json,png,md} and the table in benchmarks/README.md.
# QUICK=1 (or --quick) is a one-minute smoke test of the same path, written under outputs/bench-quick/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
args=("$@")
if [ "${QUICK:-0}" = 1 ]; then args+=(--quick); fi
exec "$PY" -m benchmarks.suite cpu "${args[@]}"
