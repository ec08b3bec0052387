#!/usr/bin/env bash
# LaCT's rotary embedding at the base of the released LaCT language-model configs (rope_theta 1e6; the recipe used
# the public layer's constructor default, 5e5, when this ran, and uses 1e6 since: these runs equal the table's at
# these lrs) on the MQAR cpu task (../README.md): RoPE on the window's and the fast
# weights' q / k as published; lr 3e-3 and 1e-2, seeds 0-2 (6 runs, ~25 min on a 2-core CPU). Resumes from
# runs.jsonl when interrupted.
# Run from the repository root: bash benchmarks/results/compare-mqar-cpu/lact-rope-theta-1e6/run.sh
set -euo pipefail
OUT=${OUT:-benchmarks/results/compare-mqar-cpu/lact-rope-theta-1e6}
SEQMIX=${SEQMIX:-.venv/bin/seqmix}

$SEQMIX compare mqar --preset cpu --layers '[lact]' --lrs '[0.003, 0.01]' --knobs '{lact: {rope_theta: [1000000.0]}}' \
  --resume true --out "$OUT"
