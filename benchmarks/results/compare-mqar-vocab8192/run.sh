#!/usr/bin/env bash
# The committed MQAR check at Zoology's vocabulary (README.md in this folder): the `cpu-vocab8192` preset - the cpu
# task (T = 128, 8 pairs) at vocabulary 8192 with 2 blocks of width 64, full attention, Gated DeltaNet, Mamba2,
# TTT-Linear, TTT-MLP and LaCT in their published LM forms, one seed, 2000 steps of batch 32.
# About an hour on a 2-core CPU. Resumes from runs.jsonl and the runs' checkpoints when interrupted.
# Run from the repository root: bash benchmarks/results/compare-mqar-vocab8192/run.sh
set -euo pipefail
OUT=${OUT:-benchmarks/results/compare-mqar-vocab8192}
SEQMIX=${SEQMIX:-.venv/bin/seqmix}

$SEQMIX compare mqar --preset cpu-vocab8192 --resume --out "$OUT" "$@"
