#!/usr/bin/env bash
# Regenerate the locks from pyproject.toml's ranges (`make lock`); commit the result. Every install of this
# repository comes from them (scripts/setup.sh, scripts/gpu_wheels.sh); tests/test_lock.py fails when pyproject and
# a lock disagree.
#   requirements/cpu-py311.txt  CPU machines and CI (Python 3.11): extras all + dev, torch's CPU build
#   requirements/gpu-py312.txt  the GPU machine (Python 3.12, its own torch 2.11 / triton 3.6): train + fla + dev;
#                               `make gpu-wheels` carries the wheels it lacks from here
# Both are written with hashes by `uv pip compile` (PyPI, plus /opt/wheels where torch's CPU build lies).
# UPGRADE=1 moves every pin to the newest allowed version (default: keep the pins that still satisfy the ranges).
# Usage: bash scripts/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-}
if [ -z "$UV" ]; then
  if [ -x .venv/bin/uv ]; then UV=.venv/bin/uv
  elif command -v uv > /dev/null; then UV=uv
  else
    tools=$(mktemp -d "${TMPDIR:-/tmp}/seqmix-uv.XXXXXX")
    trap 'rm -rf "$tools"' EXIT
    python3 -m venv "$tools" && "$tools/bin/python" -m pip install --quiet uv
    UV="$tools/bin/uv"
  fi
fi
upgrade=()
[ "${UPGRADE:-0}" = 1 ] && upgrade=(--upgrade)
common=(--generate-hashes --no-header --python-platform x86_64-manylinux_2_28 "${upgrade[@]}")
header() {  # what made the file: read by humans and by tests/test_packaging.py
  printf '# Locked by scripts/lock.sh (`make lock`) from pyproject.toml with %s: %s\n# Do not edit by hand.\n' \
    "$("$UV" --version)" "$1"
}
lock() {  # lock OUT INPUT DESCRIPTION ARGS...   (uv keeps the pins already in OUT unless --upgrade)
  local out=$1 input=$2 what=$3; shift 3
  "$UV" pip compile pyproject.toml -c "$input" "${common[@]}" "$@" -o "$out" --quiet
  { header "$what"; grep -v '^# Locked by\|^# Do not edit' "$out"; } > "$out.tmp"
  mv "$out.tmp" "$out"
  echo "lock: wrote $out ($(grep -cE '^[A-Za-z0-9]' "$out") packages)"
}
lock requirements/cpu-py311.txt requirements/cpu-py311.in "extras all,dev; Python 3.11; torch CPU build" \
  --extra all --extra dev --python-version 3.11 --find-links /opt/wheels --emit-find-links
lock requirements/gpu-py312.txt requirements/gpu-py312.in "extras train,fla,dev; Python 3.12; GPU machine" \
  --extra train --extra fla --extra dev --python-version 3.12
