#!/usr/bin/env bash
# Realization benchmark (issue 2): deit_small, heads and MLP pruned to ~50% MACs by the reference
# L1 producer (keep 3 of 6 heads and half the MLP neurons per block), ONNX Runtime CPU, 2 threads,
# batch 1 and 8, dense and pruned interleaved. Random weights: latency does not depend on them.
# Writes benchmarks/results/width_deit_small.json.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${BENCH_SECONDS:-60}
spec=$(mktemp --suffix .json)
vitshrink masks deit_small_patch16_224 --heads 0.5 --mlp 0.5 --out "$spec"
vitshrink bench deit_small_patch16_224 --spec "$spec" --batch 1,8 --threads 2 --bench-seconds "$seconds" \
  --json benchmarks/results/width_deit_small.json
rm -f "$spec"
