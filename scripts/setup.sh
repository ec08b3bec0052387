#!/usr/bin/env bash
# Create .venv and install seqmix with every extra that installs on a CPU machine (all + dev) from the lock only:
# requirements/cpu-py311.txt (exact versions with hashes, `make lock` regenerates it from pyproject.toml's ranges)
# and requirements/mamba-ssm.txt (the test oracle, built in place). Nothing is resolved here, so a fresh machine
# gets the versions CI tested. Idempotent: reruns are a no-op until pyproject.toml, a lock or this script change.
# Usage: bash scripts/setup.sh        (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOCK=requirements/cpu-py311.txt
quiet_pip() {
  # This machine's pip config names extra local indexes that may not exist; drop those warnings only.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}
have=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$have" != 3.11 ]; then
  echo "setup: $LOCK is for Python 3.11 (this project's CPU machines); $PY is $have." >&2
  echo "setup: use PYTHON=python3.11, or install by hand: pip install -e '.[all,dev]' (versions not locked)." >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.seqmix-installed
# setup.sh itself is hashed too, so an added install step reaches existing venvs.
want=$(cat pyproject.toml "$LOCK" requirements/mamba-ssm.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setup: installing seqmix and its locked dependencies into .venv (about 1-2 minutes on a fresh machine)"
# Every package with its exact version and hash; --no-deps: the lock is complete, nothing may be resolved here.
quiet_pip --require-hashes --no-deps -r "$LOCK"
# seqmix itself, editable; its dependencies are the lock's (setuptools comes from the lock too).
quiet_pip --no-deps --no-build-isolation -e .
# Test oracle: mamba-ssm's pure-Python parts (modules/ssd_minimal.py, its Triton SSD kernels). It has only an sdist
# whose CUDA build fails on a CPU torch, hence the skip flags (see ../shared/spec/environment.md). Optional: the
# Mamba-2 tests fall back to seqmix's reference loop without it, so a failure here only warns.
if ! (export MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE
      quiet_pip --require-hashes --no-deps --no-build-isolation -r requirements/mamba-ssm.txt); then
  echo "setup: warning: could not install mamba-ssm from requirements/mamba-ssm.txt (optional test oracle); continuing without it" >&2
fi
# Every installed distribution's own requirements are met (a lock that misses one is named here, not in a test).
# mamba-ssm is installed without its GPU-only dependencies on purpose.
problems=$(.venv/bin/python -m pip check --disable-pip-version-check 2>&1 | grep -v '^mamba-ssm \|^No broken' || true)
if [ -n "$problems" ]; then
  echo "$problems" >&2
  echo "setup: warning: pip check found the problems above (is $LOCK out of date? make lock)" >&2
fi
.venv/bin/python -c "import seqmix, torch; print('setup: seqmix', seqmix.__version__, 'torch', torch.__version__)"
echo "$want" > "$stamp"
