#!/usr/bin/env bash
# Canary for upstream breakage (`make test-latest`): install seqmix[all,dev] into a throwaway venv with the NEWEST
# versions pyproject.toml's ranges allow (torch stays the CPU build of the lock: an open torch is a multi-GB CUDA
# build), then collect the whole suite and run a fast subset that touches every optional library. A break such as
# transformers 5.x importing PyPI's `kernels` shows here before a user meets it; when one is found, give the range
# an upper bound with the reason in a comment, then `make lock`.
# Usage: bash scripts/test_latest.sh [pytest args...]   (default: the fast subset below; KEEP=1 keeps the venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
venv=$(mktemp -d "${TMPDIR:-/tmp}/seqmix-latest.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$venv"' EXIT
"$PY" -m venv "$venv"
pins="$venv/pins.txt"
grep -E '^(torch|triton)==' requirements/cpu-py311.in > "$pins"
echo "test-latest: installing the newest allowed versions into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 \
  | { grep -v "neither a file nor a directory" || true; }
if ! "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade --upgrade-strategy eager \
    -c "$pins" -e '.[all,dev]' > "$venv/install.log" 2>&1; then
  tail -40 "$venv/install.log"; echo "test-latest: install FAILED with the newest versions" >&2; exit 1
fi
# Build warnings are early notice of a coming break (e.g. a deprecated pyproject field): show them.
grep -A3 "Warning:" "$venv/install.log" | grep -v "neither a file nor a directory" | head -20 || true
"$venv/bin/python" -m pip freeze --exclude-editable > "$venv/freeze.txt"
echo "test-latest: versions that differ from requirements/cpu-py311.txt:"
"$venv/bin/python" - "$venv/freeze.txt" <<'PYEOF' || true
import re, sys
lock = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", open("requirements/cpu-py311.txt").read(), re.M))
norm = lambda n: n.lower().replace("_", "-")
lock = {norm(k): v for k, v in lock.items()}
for line in open(sys.argv[1]):
    if "==" in line:
        name, version = line.strip().split("==", 1)
        if lock.get(norm(name)) != version:
            print(f"  {name}: {lock.get(norm(name), 'not locked')} -> {version}")
PYEOF
# Collection of the whole suite first: an import-time break anywhere fails here.
"$venv/bin/python" -m pytest -q --collect-only -p no:cacheprovider > "$venv/collect.txt" \
  || { tail -30 "$venv/collect.txt"; echo "test-latest: collection FAILED with the newest versions" >&2; exit 1; }
echo "test-latest: $(tail -1 "$venv/collect.txt")"
if [ $# -eq 0 ]; then
  # A fast subset over every optional library: packaging and shadowing, fla, diffusers, lightning, the CLI.
  set -- -q -p no:cacheprovider -m "not slow" tests/test_packaging.py tests/test_imports.py tests/test_cli.py \
    tests/test_gated_deltanet.py tests/test_dit.py tests/test_recipes.py
fi
"$venv/bin/python" -m pytest "$@"
