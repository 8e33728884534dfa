# The two commands a new user needs: `make run` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: local broker + one worker + sample feed; prints the URLs. Ctrl-C stops everything.
run: $(STAMP)
	$(BIN)/tally dev

## test: the whole suite (unit, property and end-to-end through the real local broker).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .

## bench: the sales, metrics and archive benchmarks (figures and ratios printed; see README Performance).
bench: $(STAMP)
	$(BIN)/python -m bench.sales
	$(BIN)/python -m bench.metrics
	$(BIN)/python -m bench.archive
	$(BIN)/python -m bench.ingest

clean:
	rm -rf $(VENV) data .pytest_cache .hypothesis
