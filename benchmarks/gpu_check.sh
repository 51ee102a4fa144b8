#!/usr/bin/env bash
# The GPU check, sized for a few minutes on a lent GPU machine (one H100/H200; see ../shared/GPU.md): from a bare
# machine with the carried wheels (.whl/, made here by benchmarks/gpu_wheels.sh), report what the machine has
# (TensorRT's import, `sdrt doctor`), run the GPU tests (pytest -m gpu), then time SD 1.5 at 512x512, 50 steps,
# batch 1 and 8, on every sdrt backend that can run there against diffusers fp16 + SDPA (two runs each after a
# warm-up; no torch.compile baseline, no cold starts: benchmarks/gpu.sh is the full suite). Backends that cannot
# run there (TensorRT without its libraries, ONNX Runtime without onnxruntime-gpu) are listed as skipped with the
# reason. Planned at under 8 minutes; not yet run on a GPU.
# Writes into $OUT (default outputs/gpu-check): environment.txt, doctor.json, gpu-tests.txt, <gpu>-check.{json,md,png}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu-check}
PY=${PY:-python3}
mkdir -p "$OUT"
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 SDRT_HASH_MEMO=off
start=$(date +%s)
{
    echo "== tensorrt: python3 -c 'import tensorrt'"
    "$PY" -c 'import tensorrt; print("tensorrt", tensorrt.__version__)' 2>&1 | tail -1
    echo "== libnvinfer: $(ldconfig -p | grep -c nvinfer) entries in ldconfig"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    echo "== sdrt doctor"
    "$PY" -m sdrt.cli doctor 2>&1
} | tee "$OUT/environment.txt"
"$PY" -m sdrt.cli doctor --json > "$OUT/doctor.json" 2>/dev/null
echo "== GPU tests"
timeout 270 "$PY" -m pytest -q -m gpu tests/engines -p no:cacheprovider -rs 2>&1 | tee "$OUT/gpu-tests.txt"
tests=${PIPESTATUS[0]}
echo "== SD 1.5 512x512, 50 steps, batch 1 and 8 ($(($(date +%s) - start)) s so far)"
timeout 330 "$PY" -m benchmarks.suite gpu-check --no-cold-start --results "$OUT"
bench=$?
echo "gpu_check: tests exit $tests, benchmark exit $bench, $(($(date +%s) - start)) s in all"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
