#!/usr/bin/env bash
# One GPU session, one command: every kernel against its PyTorch reference on fresh random bf16
# inputs (~1 min, more on the first run while Triton compiles), then the denoising-step benchmark
# at the real config (< 8 min on an H100). Results: $OUT/gpu_check.json and $OUT/gpu_step.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.}
python bench/gpu_check.py --json "$OUT/gpu_check.json"
python bench/gpu_step.py --json "$OUT/gpu_step.json"
