# Tastebud developer targets. `make demo` and `make test` are the two commands of the README.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# PyTorch for the 'neural' extra (Mult-VAE), installed before it: this pinned version resolves to the CPU wheel of
# the local wheel directory (pip's find-links), where a plain `torch` could pull a multi-GB CUDA build from PyPI
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-fast lint format typecheck audit bench screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev,neural]'
	touch $(STAMP)

## setup: create the virtual environment and install Tastebud with its development tools
setup: $(STAMP)

## demo: the main job (fetch MovieLens-100K, prepare, split, train and compare models)
demo: setup
	$(BIN)/tastebud demo

## test: lint, format check, type check, dependency audit, and the full test suite with its coverage floor
## (slow and integration tests included; installs PostgreSQL, promtool and Chromium when missing)
test: setup
	bash scripts/ensure-postgres.sh
	bash scripts/ensure-promtool.sh
	bash scripts/ensure-chromium.sh
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	bash scripts/audit.sh
	$(BIN)/python -m pytest --cov

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

## audit: known vulnerabilities in the installed dependencies (pip-audit; skipped with a notice when offline)
audit: setup
	bash scripts/audit.sh

## bench: the benchmarks (figures go to bench/RESULTS.md by hand)
bench: setup
	$(BIN)/python bench/bench_data.py

## screenshots: the studio's pages as docs/studio/<page>.png (the README's pictures): `tastebud demo` once into
## .tastebud-screenshots/, then the API and the studio over it, every page in headless Chromium
screenshots: setup
	bash scripts/ensure-chromium.sh
	$(BIN)/python scripts/screenshots.py --serve .tastebud-screenshots --out docs/studio

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build dist src/*.egg-info
