#!/usr/bin/env bash
# Build the offline wheelhouse `.gpu-wheels/` for a CUDA machine without a package index (`make gpu-wheels`).
#
# It holds every wheel a GPU run of `scripts/gpu_check.sh` needs that a machine with the usual CUDA PyTorch stack
# lacks (torch, triton, lightning, torchmetrics, einops, numpy, safetensors, transformers, PyYAML, pytest are
# assumed present), for CPython 3.12 on manylinux x86_64, without dependencies (each needed one is named here):
#   fla-core, flash-linear-attention      Gated DeltaNet / Mamba2 Triton kernels (pure Python)
#   jsonargparse + docstring-parser + typeshed-client   the `seqmix` CLI (jsonargparse[signatures])
#   mamba-ssm                             built here with its CUDA extension skipped: seqmix calls only its
#                                         Triton SSD kernels (seqmix.ops.ssd.import_mamba_ssm)
# Not carried: diffusers (no GPU stage uses it), flash-attn (no wheel for every torch / CUDA pair: attention
# runs on FlexAttention; see README "Running on a GPU"), flash-attn-4 (its CuTe DSL runtime alone, 88 MiB, is over
# the size budget).
#
# Usage: bash scripts/gpu_wheels.sh [OUT_DIR]   (default .gpu-wheels; GPU_WHEELS_MAX_MIB overrides the 40 MiB cap)
# The list of distributions is also read by `gpu_check.sh --dry-run` (seqmix/bench/gpu_kit.py WHEELS) to check
# that a wheelhouse is complete: keep the two in step (tests/test_gpu_kit.py checks it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.gpu-wheels}
MAX_MIB=${GPU_WHEELS_MAX_MIB:-40}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

# name==version: pure-Python or manylinux wheels taken from the index as they are.
DOWNLOAD=(
  fla-core==0.6.0
  flash-linear-attention==0.6.0
  jsonargparse==4.53.0
  docstring-parser==0.18.0
  typeshed-client==2.15.0
)
MAMBA=mamba-ssm==2.3.2.post1

rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp"
"$PY" -m pip download --quiet --no-deps --disable-pip-version-check --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --platform any -d "$OUT.tmp" "${DOWNLOAD[@]}"

# mamba-ssm ships only an sdist; build a pure-Python wheel (its Triton kernels; no CUDA extension).
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
  "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$OUT.tmp" "$MAMBA"

# gpu_check.sh installs them with pip, or by unpacking where pip is missing: only pure-Python wheels qualify.
for w in "$OUT.tmp"/*.whl; do
  case "$w" in *-none-any.whl) ;; *) echo "error: $(basename "$w") is not a pure-Python wheel" >&2; exit 1 ;; esac
done
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
total=0
echo "wheelhouse $OUT:"
for w in "$OUT"/*.whl; do
  size=$(stat -c %s "$w")
  total=$((total + size))
  printf '  %-72s %8.2f MiB\n' "$(basename "$w")" "$(echo "$size / 1048576" | bc -l)"
done
printf '  %-72s %8.2f MiB (limit %s MiB)\n' "total" "$(echo "$total / 1048576" | bc -l)" "$MAX_MIB"
if [ "$total" -gt $((MAX_MIB * 1048576)) ]; then
  echo "error: wheelhouse is $total bytes, over the ${MAX_MIB} MiB limit" >&2
  exit 1
fi
