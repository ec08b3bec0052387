#!/usr/bin/env bash
# The earlier CPU MQAR comparison (README.md in this folder): the `cpu-1epoch` preset over every default layer
# (width 64, learning rates 1e-3 / 3e-3 / 1e-2, seeds 0-2), each layer in the published form for language tasks
# (TTT: the ttt-lm-pytorch layer). Resumes from runs.jsonl when interrupted: run the script again to finish it.
# Run from the repository root: bash benchmarks/results/compare-mqar-cpu-1epoch/run.sh
# (Superseded by ../compare-mqar-cpu, three epochs. The attention rows here ran with RoPE, before the recipes took
# Zoology's attention form; with the current recipes, resuming retrains them.)
set -euo pipefail
OUT=${OUT:-benchmarks/results/compare-mqar-cpu-1epoch}
SEQMIX=${SEQMIX:-.venv/bin/seqmix}

$SEQMIX compare mqar --preset cpu-1epoch --resume --out "$OUT"
# TTT-MLP learns only at the grid's highest lr (one seed of three): one step further up, lr 3e-2, three seeds.
$SEQMIX compare mqar --preset cpu-1epoch --resume --layers '[ttt_mlp]' --lrs '[3e-2]' --out "$OUT/ttt-mlp-lr3e-2"
# TTT-MLP's inner step size: base lr 3, 10 and 30 (the published 1.0 is in the main table) at the three outer lrs.
$SEQMIX compare mqar --preset cpu-1epoch --resume --layers '[ttt_mlp]' --lrs '[3e-3, 1e-2, 3e-2]' \
  --knobs '{ttt_mlp: {base_lr: [3.0, 10.0, 30.0]}}' --out "$OUT/ttt-mlp-inner-lr"
