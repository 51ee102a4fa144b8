#!/usr/bin/env bash
# The GPU suite (one H100, planned for 8 minutes once the models exist; not yet run): SD 1.5 at 512x512, 50 steps,
# batch 1 and 8, and SDXL base at 1024x1024, 30 steps, batch 1, both with random weights in the published
# architectures; every sdrt backend available there (sdrt does not run SDXL yet: listed as not supported) against
# diffusers fp16 + SDPA and diffusers fp16 + SDPA + torch.compile, alternating run by run.
# Needs a CUDA build of torch in $PY's environment (see benchmarks/README.md); onnxruntime-gpu or tensorrt add
# those backends (and an SD 1.5 export, a few minutes more the first time; TensorRT builds take minutes more).
# --no-cold-start leaves out the fresh-process cold starts and from-scratch builds.
# Writes benchmarks/results/<gpu>.{json,png,md} and the table in benchmarks/README.md. QUICK=1: smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu.sh: $PY has no CUDA build of torch, or there is no GPU; see benchmarks/README.md" >&2
    exit 1
fi
args=("$@")
if [ "${QUICK:-0}" = 1 ]; then args+=(--quick); fi
exec "$PY" -m benchmarks.suite gpu "${args[@]}"
