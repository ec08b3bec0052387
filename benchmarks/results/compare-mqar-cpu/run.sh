#!/usr/bin/env bash
# The committed CPU MQAR comparison (README.md in this folder): the `cpu` preset over every default layer (width 64,
# learning rates 1e-3 / 3e-3 / 1e-2, seeds 0-2, 115,200 fresh examples = 3600 steps of batch 32), each layer in the
# form its public reference uses for language tasks (TTT: the ttt-lm-pytorch layer; attention: Zoology's).
# About 5-6 hours on a 2-core CPU (two single-threaded runs at a time). Resumes from runs.jsonl and the runs'
# checkpoints when interrupted: run the script again to go on.
# Run from the repository root: bash benchmarks/results/compare-mqar-cpu/run.sh
set -euo pipefail
OUT=${OUT:-benchmarks/results/compare-mqar-cpu}
SEQMIX=${SEQMIX:-.venv/bin/seqmix}

$SEQMIX compare mqar --preset cpu --resume --out "$OUT"
