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

# The distributions carried, at the exact versions (with hashes) of requirements/gpu-py312.txt, the GPU lock.
LOCK=requirements/gpu-py312.txt
DOWNLOAD=(fla-core flash-linear-attention jsonargparse docstring-parser typeshed-client)
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp"
"$PY" - "$LOCK" "$OUT.tmp/carried.txt" "${DOWNLOAD[@]}" <<'PYEOF'
import re, sys
lock, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
entries = {}  # distribution name -> its lock entry (the pin and its hashes, without the "# via" comments)
for block in re.split(r"\n(?=[A-Za-z0-9])", open(lock).read()):
    m = re.match(r"([A-Za-z0-9_.\-]+)==", block)
    if m:
        entries[m.group(1).lower().replace("_", "-")] = block.split("    #")[0].rstrip()
missing = sorted(set(names) - set(entries))
if missing:
    sys.exit(f"error: {missing} not in {lock}: run make lock")
open(out, "w").write("\n".join(entries[n] for n in names) + "\n")
PYEOF
"$PY" -m pip download --quiet --no-deps --disable-pip-version-check --only-binary=:all: --require-hashes \
  --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --platform any -d "$OUT.tmp" -r "$OUT.tmp/carried.txt"
rm "$OUT.tmp/carried.txt"

# mamba-ssm ships only an sdist (pinned with its hash in requirements/mamba-ssm.txt); build a pure-Python wheel
# (its Triton kernels; no CUDA extension).
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
  "$PY" -m pip wheel --quiet --no-deps --no-build-isolation --require-hashes -w "$OUT.tmp" -r requirements/mamba-ssm.txt

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
