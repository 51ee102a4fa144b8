#!/usr/bin/env bash
# The GPU suite (one H100, planned for 8 minutes once the models exist; not yet run): SD 1.5 at 512x512, 50 steps,
# batch 1 and 8, and SDXL base at 1024x1024, 30 steps, batch 1, both with random weights in the published
# architectures; every sdrt backend available there (sdrt does not run SDXL yet: listed as not supported) against
# diffusers fp16 + SDPA and diffusers fp16 + SDPA + torch.compile, alternating run by run. DeepCache: SD 1.5 at
# 512x512, 50 steps, and SDXL base at 1024x1024, 30 steps, exact against intervals 3 and 5 (branch 0) on the torch
# backend, side by side in one run.
# Needs a CUDA build of torch in $PY's environment (see benchmarks/README.md); onnxruntime-gpu or tensorrt add
# those backends (and an SD 1.5 export, a few minutes more the first time; TensorRT builds take minutes more).
# --no-cold-start leaves out the fresh-process cold starts and from-scratch builds.
# Writes benchmarks/results/<gpu>.{json,png,md} and the table in benchmarks/README.md. QUICK=1: smoke test.
# --dry-run: print the sdrt bench commands (each configuration checked) and run nothing; works without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
case " $* " in
*" --dry-run "*) ;;  # prints the commands it would run: no GPU needed
*)
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "gpu.sh: $PY has no CUDA build of torch, or there is no GPU; see benchmarks/README.md" >&2
        exit 1
    fi
    ;;
esac
args=("$@")
if [ "${QUICK:-0}" = 1 ]; then args+=(--quick); fi
exec "$PY" -m benchmarks.suite gpu "${args[@]}"
