#!/usr/bin/env bash
# The CPU suite (sdrt bench's code, four models): the tiny demo model at 128x128, 20 steps, batch 1/2/4; a
# full-size SD 1.5 architecture with random weights at 256x256, 4 steps, batch 1; SDXL's topology at half widths
# (a 0.64 B UNet) at 256x256, 4 steps; the tiny unCLIP model's variations at 128x128, 20 steps. Every sdrt backend
# (onnxruntime, torch, openvino; tensorrt reports why it cannot run) against diffusers fp32, alternating run by
# run. DeepCache: the full-size SD 1.5 and SDXL-small at 256x256, 20 steps, exact against intervals 3 and 5
# (branch 0) on the torch backend, side by side. About 16 minutes on the 2-core machine before the DeepCache rows
# (which add about 25), exports included (a first run also writes the 4 GB SD 1.5 model;
# peak RSS 21 GB, the SD 1.5 scenario with every contender loaded).
# Writes benchmarks/results/<machine>.{json,png,md} and the table in benchmarks/README.md.
# QUICK=1 (or --quick) is a one-minute smoke test of the same path, written under outputs/bench-quick/.
# --dry-run prints the sdrt bench commands it would run (each configuration checked) and runs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
args=("$@")
if [ "${QUICK:-0}" = 1 ]; then args+=(--quick); fi
exec "$PY" -m benchmarks.suite cpu "${args[@]}"
