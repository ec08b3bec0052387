#!/usr/bin/env bash
# The committed CPU MQAR comparison (README.md in this folder): the `cpu` preset over every default layer, then two
# scans per TTT layer (inner base lr; mini-batch size) at the recipes' outer lr 3e-3. Each step resumes from its
# runs.jsonl when interrupted: run the script again to finish it.
# Run from the repository root: bash benchmarks/results/compare-mqar-cpu/run.sh
set -euo pipefail
OUT=${OUT:-benchmarks/results/compare-mqar-cpu}
SEQMIX=${SEQMIX:-.venv/bin/seqmix}

$SEQMIX compare mqar --preset cpu --resume --out "$OUT"
$SEQMIX compare mqar --preset cpu --resume --layers '[ttt_linear, ttt_mlp]' --lrs '[3e-3]' \
  --knobs '{ttt_linear: {base_lr: [0.1, 1.0, 10.0]}, ttt_mlp: {base_lr: [0.1, 1.0, 10.0]}}' \
  --out "$OUT/ttt-scans/base-lr"
$SEQMIX compare mqar --preset cpu --resume --layers '[ttt_linear, ttt_mlp]' --lrs '[3e-3]' \
  --knobs '{ttt_linear: {mini_batch_size: [8, 32]}, ttt_mlp: {mini_batch_size: [8, 32]}}' \
  --out "$OUT/ttt-scans/mini-batch"
