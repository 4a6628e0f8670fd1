# The two commands: `make run` (the whole pipeline on the embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-all bench install clean help

help:
	@echo "make run       - set up .venv if needed, run the pipeline on the embedded default (digits)"
	@echo "make test      - set up .venv if needed, run the fast test suite (not 'slow')"
	@echo "make test-all  - every test, including slow ones"
	@echo "make bench     - every scripts/bench_*.py -> benchmarks/results.md (BENCH_ARGS=--quick: tiny settings)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/advprior $(ARGS)

test: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/pytest -q -m "slow or not slow" $(PYTEST_ARGS)

# Every scripts/bench_*.py -> benchmarks/results.{md,json}; BENCH_ARGS="--quick" for a check that they run,
# BENCH_ARGS="--readme README.md" to refresh the README's benchmark table.
bench: $(STAMP)
	$(BIN)/python scripts/bench_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
