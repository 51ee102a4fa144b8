#!/usr/bin/env bash
# sdrt against diffusers on a full-size SD 1.5 architecture (random weights) on the CPU, in one run.
# Writes models/sd15-random, artifacts/sd15-random (about 8 GB together) and benchmarks/results/backends-cpu-sd15-256.json.
# About 15 minutes on a 2-core machine, most of it the export.
set -euo pipefail
cd "$(dirname "$0")/.."
SDRT=.venv/bin/sdrt
[ -f models/sd15-random/model_index.json ] || $SDRT demo-model models/sd15-random --preset sd15
[ -f artifacts/sd15-random/manifest.json ] || $SDRT export models/sd15-random -o artifacts/sd15-random \
    --max-batch 1 --min-size 256 --max-size 512 --opt-size 256
.venv/bin/python benchmarks/backends.py --model models/sd15-random --artifact artifacts/sd15-random \
    --size 256x256 --steps 4 --runs 3 --scheduler dpmpp_2m --json benchmarks/results/backends-cpu-sd15-256.json
