#!/usr/bin/env bash
# One GPU session, one command (under 9 minutes on an H100/H200):
#   1. the ahead-of-time compile table of every kernel for sm_80/89/90/100/120 (~1 min; needs no GPU),
#   2. every kernel against its PyTorch reference on fresh random bf16 inputs, and the CUDA-graph
#      step against model.denoise (~1 min, more on the first run while Triton compiles),
#   3. the denoising-step benchmark at the real config against the weight-streaming floor and
#      transformers (< 7 min),
#   4. long contexts: a small random checkpoint's cache and peak memory against the estimate at
#      32K / 128K / 256K tokens, in bfloat16 (~1 min).
# Results: $OUT/compile.json, $OUT/gpu_check.json, $OUT/gpu_step.json, $OUT/long_context.json. Every part runs even if an
# earlier one fails; the exit status is 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.}
status=0
python tools/compile_check.py --json "$OUT/compile.json" || status=1
python bench/gpu_check.py --json "$OUT/gpu_check.json" || status=1
python bench/gpu_step.py --json "$OUT/gpu_step.json" || status=1
python bench/long_context.py --device cuda --dtype bfloat16 --json "$OUT/long_context.json" || status=1
exit $status
