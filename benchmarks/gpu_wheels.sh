#!/usr/bin/env bash
# Run HERE (not on the GPU machine): put into .whl/ the pure-Python wheels benchmarks/gpu_check.sh needs on a
# bare GPU machine (Python 3.12): ../shared/gpu/wheels.sh's (diffusers, polygraphy, ...) and sdrt's own extras
# the GPU image lacks (onnx-graphsurgeon for fp16 export, torchsde for DPM++ SDE). Then carry .whl in each run.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
../shared/gpu/wheels.sh .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl onnx-graphsurgeon==0.6.1 torchsde==0.2.6 trampoline==0.1.2
du -sh .whl
