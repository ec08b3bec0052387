# Quick start: `make run` (set up + main job), `make test` (set up + tests). See README.md.
PY := .venv/bin/python
SEQMIX := .venv/bin/seqmix

.PHONY: setup run test bench-layers clean

setup:
	bash scripts/setup.sh

# Main job (small built-in default): train and evaluate every text-to-video baseline with equal budgets on
# procedural storyboards; prints the table, writes runs/compare-video/ (results.md/json/png, sample GIFs).
run: setup
	$(SEQMIX) compare video --out runs/compare-video

test: setup
	$(PY) -m pytest -q

# Full CPU layer benchmark, committed under benchmarks/results/.
bench-layers: setup
	$(SEQMIX) bench layers --out benchmarks/results/layers-cpu

clean:
	rm -rf .venv runs
