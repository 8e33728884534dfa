# The two commands a new user needs: `make run` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp
# The dashboard's browser test drives Debian's Chromium (nothing is downloaded by the test tools).
CHROMIUM := /usr/bin/chromium
# `make bench` loads the query endpoints with wrk (Debian's package) and compares with Quix Streams.
WRK := /usr/bin/wrk
# ... and reads through the shipped answer cache (docker/nginx.conf) with Debian's nginx, which
# `make test` runs too (tests/integration/test_answer_cache_e2e.py).
NGINX := /usr/sbin/nginx
BENCH_STAMP := $(VENV)/.bench-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends

.PHONY: run test lint bench bench-more soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(CHROMIUM):
	@echo "installing Debian's chromium for the dashboard's browser test ..."
	$(APT_INSTALL) chromium || ($(SUDO) apt-get update && $(APT_INSTALL) chromium)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

$(WRK):
	@echo "installing Debian's wrk for the query benchmark ..."
	$(APT_INSTALL) wrk || ($(SUDO) apt-get update && $(APT_INSTALL) wrk)

$(NGINX):
	@echo "installing Debian's nginx for the answer cache's test and benchmark ..."
	$(APT_INSTALL) nginx-light || ($(SUDO) apt-get update && $(APT_INSTALL) nginx-light)

## run: local broker + one worker + sample feed; prints the URLs. Ctrl-C stops everything.
run: $(STAMP)
	$(BIN)/tally dev

## test: the whole suite (unit, property and end-to-end through the real local broker).
test: $(STAMP) $(CHROMIUM) $(NGINX)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

## lint: ruff, mypy (strict on tally/core) and the import-layer contracts.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## bench: Tally vs Faust's windows vs Quix Streams vs the raw ceiling on both workloads, plus
## query latency and load; one table, written to bench/results/<date>.md (see README Performance);
## query answers straight from a worker and through the answer cache (docker/nginx.conf);
## and both pipelines' freshness at 25-100 % of a worker's sustained rate.
bench: $(BENCH_STAMP) $(WRK) $(NGINX)
	$(BIN)/python -m bench

## bench-more: the archive, ingest, access-control, hostile-input, live-stream, forwarding,
## failover, cell-cache-size and merchants benchmarks.
bench-more: $(STAMP) $(WRK)
	$(BIN)/python -m bench.archive
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.access
	$(BIN)/python -m bench.hostile
	$(BIN)/python -m bench.live
	$(BIN)/python -m bench.routing
	$(BIN)/python -m bench.failover
	$(BIN)/python -m bench.cell_cache
	$(BIN)/python -m bench.merchants

## soak: the chaos soak, 5 minutes: a random worker of three SIGKILLed every 10-20 s and
## restarted under load; nothing may be lost or counted twice (bench/soak.py).
soak: $(STAMP)
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) data .pytest_cache .hypothesis test-artifacts
