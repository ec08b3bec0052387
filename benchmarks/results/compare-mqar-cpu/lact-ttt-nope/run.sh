#!/usr/bin/env bash
# Which part of LaCT's rotary embedding keeps it on the MQAR plateau (../README.md): the public LM layer with RoPE on
# its window attention only (`ttt_nope: true`, the public option), the fast weights' q / k unrotated; the cpu task,
# lr 3e-3 and 1e-2, seeds 0-2 (6 runs, ~25 min on a 2-core CPU). Resumes from runs.jsonl when interrupted.
# Run from the repository root: bash benchmarks/results/compare-mqar-cpu/lact-ttt-nope/run.sh
set -euo pipefail
OUT=${OUT:-benchmarks/results/compare-mqar-cpu/lact-ttt-nope}
SEQMIX=${SEQMIX:-.venv/bin/seqmix}

$SEQMIX compare mqar --preset cpu --layers '[lact]' --lrs '[0.003, 0.01]' --knobs '{lact: {ttt_nope: [true]}}' \
  --resume true --out "$OUT"
