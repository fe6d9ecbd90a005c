# Every target sets itself up: a virtual environment in the checkout, CPU torch pinned first, the project installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test test-slow lint bench bench-metrics bench-gpu bench-memory clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps "nnunet==1.7.1" "batchgenerators==0.24"  # the [reference] extra, torch pin kept
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m covlight.demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check covlight tests benchmarks

# The CPU benchmarks (issues 3 and 7; NSD at the 256 size only), each beside its peer, JSON in benchmarks/results/ (about 15 min on 2 cores).
# nnU-Net's network (the `bench` extra) goes in with --no-deps so the torch pin holds.
bench: $(STAMP)
	$(PY) -m pip install --quiet --no-deps "dynamic-network-architectures>=0.4"
	$(PY) benchmarks/metrics.py --quick --out benchmarks/results/metrics_quick.json
	$(PY) benchmarks/network_parity.py --out benchmarks/results/network_parity.json
	$(PY) benchmarks/framework_overhead.py --out benchmarks/results/framework_overhead.json
	$(PY) benchmarks/data_pipeline.py --out benchmarks/results/data_pipeline.json
	$(PY) benchmarks/sliding_window.py --out benchmarks/results/sliding_window.json

# NSD at both sizes, 256 and 512 (issue 3; the 512 cases take a while on 2 cores).
bench-metrics: $(STAMP)
	$(PY) benchmarks/metrics.py --out benchmarks/results/metrics.json

# On a CUDA machine (exits with a message, status 2, without one).
bench-gpu: $(STAMP)
	$(PY) benchmarks/gpu.py --out benchmarks/results/gpu.json

bench-memory: $(STAMP)
	$(PY) benchmarks/memory.py --out benchmarks/results/memory.json

clean:
	rm -rf $(VENV) outputs multirun demo_data
