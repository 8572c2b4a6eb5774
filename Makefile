# Tastebud developer targets. `make demo` and `make test` are the two commands of the README.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint format typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## setup: create the virtual environment and install Tastebud with its development tools
setup: $(STAMP)

## demo: the main job (fetch MovieLens-100K, prepare, split, train and compare models)
demo: setup
	$(BIN)/tastebud demo

## test: lint and the full test suite (slow and integration tests included; installs PostgreSQL and promtool when missing)
test: setup
	bash scripts/ensure-postgres.sh
	bash scripts/ensure-promtool.sh
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest

## test-fast: the test suite without slow and integration tests
test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not integration"

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: setup
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

typecheck: setup
	$(BIN)/mypy

## bench: the benchmarks (figures go to bench/RESULTS.md by hand)
bench: setup
	$(BIN)/python bench/bench_data.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build dist src/*.egg-info
