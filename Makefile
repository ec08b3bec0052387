# Quick start: `make run` (set up + main job), `make test` (set up + tests). See README.md.
PY := .venv/bin/python
SEQMIX := .venv/bin/seqmix

.PHONY: setup run test lock test-latest bench-layers gpu-wheels gpu-check-dry clean

setup:
	bash scripts/setup.sh

# Main job (small built-in default): train and evaluate the text-to-video baselines with equal budgets (400 steps,
# one seed; every layer but the two attention controls swa and local_attn, to fit 15 minutes on a 2-core CPU) on
# procedural storyboards; prints the table, writes runs/compare-video/ (results.md/json/png, sample GIFs). The
# committed comparison (all layers, 500 steps, 2 seeds) is `seqmix compare video --seeds 2 --max_steps 500`.
run: setup
	$(SEQMIX) compare video --max_steps 400 --skip "[swa, local_attn]" --out runs/compare-video

test: setup
	$(PY) -m pytest -q

# Regenerate the locks (requirements/*.txt) from pyproject.toml's ranges, keeping pins that still fit
# (UPGRADE=1 make lock: newest allowed versions). Commit the result; every install comes from it.
lock:
	bash scripts/lock.sh

# Canary for upstream breakage: a throwaway venv with the NEWEST versions pyproject's ranges allow (not the lock),
# then test collection and a fast subset. A failure here is a break users of an unlocked install will meet.
test-latest:
	bash scripts/test_latest.sh

# Full CPU layer benchmark, committed under benchmarks/results/.
bench-layers: setup
	$(SEQMIX) bench layers --out benchmarks/results/layers-cpu

# Offline wheelhouse for a CUDA machine without a package index (README "Running on a GPU"): .gpu-wheels/
gpu-wheels: setup
	bash scripts/gpu_wheels.sh .gpu-wheels

# The GPU kit on CPU: wheelhouse check, every stage resolved and smoke-run (the real run: bash scripts/gpu_check.sh).
gpu-check-dry: setup
	bash scripts/gpu_check.sh --dry-run --out runs/gpu-check-dry

clean:
	rm -rf .venv runs
