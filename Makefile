# One-command entry points (see README). PYTHON must be 3.10+; 3.11 is what CI uses.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $@

.PHONY: setup demo test test-fast lint bench
setup: $(BIN)/.installed

demo: setup  ## the whole toolkit on generated sample data, CPU only, 1-3 min: ingest, shard set, MAE, fine-tune, report, predict
	$(BIN)/plankton-train demo --out sample_data

lint: setup  ## ruff (lint + format) and mypy, with the versions pinned in pyproject.toml
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy plankton_data plankton_train

test: lint  ## lint + the whole test suite, slow tests included (real-data tests skip when ../shared/realdata is absent)
	$(BIN)/python -m pytest -q

test-fast: setup  ## the suite without the tests marked slow
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/bench_ingest.py
