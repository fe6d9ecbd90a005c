# Every target sets itself up: a virtual environment in the checkout, CPU torch pinned first, the project installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test test-slow lint bench bench-memory clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m covlight.demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check covlight tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/metrics.py --out benchmarks/results/metrics.json

bench-memory: $(STAMP)
	$(PY) benchmarks/memory.py --out benchmarks/results/memory.json

clean:
	rm -rf $(VENV) outputs multirun demo_data
