# Quick start: `make run` (set up + main job), `make test` (set up + tests). See README.md.
PY := .venv/bin/python
SEQMIX := .venv/bin/seqmix

.PHONY: setup run test bench-layers clean

setup:
	bash scripts/setup.sh

# Main job (small built-in default): compare every registry layer's speed, memory and state size vs T on CPU.
run: setup
	$(SEQMIX) bench layers --lengths '[256, 512, 1024, 2048]' --out runs/layers

test: setup
	$(PY) -m pytest -q

# Full CPU layer benchmark, committed under benchmarks/results/.
bench-layers: setup
	$(SEQMIX) bench layers --out benchmarks/results/layers-cpu

clean:
	rm -rf .venv runs
