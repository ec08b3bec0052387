#!/usr/bin/env bash
# One command turns a CUDA machine into a full validation and benchmark of seqmix (README "Running on a GPU").
#
#   bash scripts/gpu_check.sh [--out DIR] [--stages a,b,...] [--dry-run] [--budget-scale X]
#
# Run from anywhere; it works in the repository root. If `.gpu-wheels/` exists (an offline wheelhouse made by
# `make gpu-wheels`), its wheels are installed into a temporary target directory (no index, no dependencies) that
# goes first on PYTHONPATH; the checkout itself is imported from the repository root (no installation needed).
# Then `python -m seqmix.bench.cli` runs the stages of seqmix/bench/gpu_kit.py (STAGES), each under its own
# time budget, writes kit.json, summary.md, log.txt and one <stage>.json per stage under --out (default
# runs/gpu-check; a relative path is taken from the repository root) and prints the summary table last. `--dry-run`
# runs on CPU: wheelhouse check, every stage's command resolved and its CPU smoke variant run (tests/test_gpu_kit.py
# runs it in the test suite). GPU_WHEELS overrides the wheelhouse folder.
# Python: $PYTHON, else .venv/bin/python when it exists, else python3.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
COMMAND="bash scripts/gpu_check.sh${*:+ $*}"

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi

WHEELS="${GPU_WHEELS:-$ROOT/.gpu-wheels}"
TARGET=""
cleanup() { [ -n "$TARGET" ] && rm -rf "$TARGET"; return 0; }
trap cleanup EXIT
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  TARGET="$(mktemp -d "${TMPDIR:-/tmp}/seqmix-gpu-wheels.XXXXXX")"
  echo "[gpu-check] installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $TARGET"
  if "$PY" -m pip --version > /dev/null 2>&1; then
    "$PY" -m pip install --quiet --no-index --no-deps --disable-pip-version-check --target "$TARGET" "$WHEELS"/*.whl
  else  # no pip: the wheels are pure Python (py3-none-any), so unpacking them is installing them
    echo "[gpu-check] pip is not available: unpacking the wheels"
    "$PY" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
      "$TARGET" "$WHEELS"/*.whl
  fi
  export PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "[gpu-check] no wheelhouse at $WHEELS: using the installed packages"
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT"

set +e
"$PY" -m seqmix.bench.cli --wheelhouse "$WHEELS" --command "$COMMAND" "$@"
rc=$?
exit $rc
