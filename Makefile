# InsightFlow — every target does its own set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
USERS  ?= 2000
export DAGSTER_HOME := $(CURDIR)/.dagster_home

.PHONY: install system-deps spark-deps run ui serve test check bench clean

install: $(VENV)/.installed

# rectools-lightfm ships no wheel: pip compiles it, so a C compiler comes first (installed when
# we are root), and LIGHTFM_NO_CFLAGS=1 leaves out -march=native: the binary runs on any x86-64.
$(VENV)/.installed: pyproject.toml
	@command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null; \
		else echo "a C compiler is missing: install gcc (pip builds rectools-lightfm from source)"; exit 1; fi; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	LIGHTFM_NO_CFLAGS=1 $(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

# Generate ~2,000 users into the clean location if it is empty, then run the whole graph
# for a new run partition (recorded in ./.dagster_home, so it shows in `make ui`).
run: install
	@if [ -z "$$(ls -A data/clean 2>/dev/null)" ]; then \
		$(BIN)/insightflow generate --users $(USERS) --missing-rate 0.05 --test-share 0.05 --out data/clean; \
	fi
	$(BIN)/insightflow run

# The events form (README "Form 3"): a RetailRocket-shaped log of $(VISITORS) visitors in a clean
# location of its own (data/clean holds the Instacart files, and a location holds one form).
# generate-events always (re)writes it; run-events generates it only if it is empty, then runs
# the whole graph on it like `make run` (same DAGSTER_HOME, same curated store and latest/).
.PHONY: generate-events run-events
VISITORS   ?= 20000
EVENTS_DIR ?= data/clean-events
generate-events: install
	$(BIN)/insightflow generate --form events --users $(VISITORS) --out $(EVENTS_DIR)

run-events: install
	@if [ -z "$$(ls -A $(EVENTS_DIR) 2>/dev/null)" ]; then \
		$(BIN)/insightflow generate --form events --users $(VISITORS) --out $(EVENTS_DIR); \
	fi
	INSIGHTFLOW_SOURCE_DIR=$(abspath $(EVENTS_DIR)) $(BIN)/insightflow run

# `insightflow init` sets up a fresh DAGSTER_HOME under its lock first: `dg dev` opens the
# instance in several processes without one, and may race a `make run` started alongside.
# `dg dev` serves the code location that [tool.dg] in pyproject.toml names, with .venv's python.
ui: install
	$(BIN)/insightflow init
	$(BIN)/dg dev -h 127.0.0.1 -p 3000

# The HTTP API over what `make run` promoted to latest/ (README "Serving"): loopback and one
# worker by default; INSIGHTFLOW_ADMIN_KEY in the environment enables POST /admin/reload.
HOST ?= 127.0.0.1
PORT ?= 8000
serve: install
	$(BIN)/insightflow serve --host $(HOST) --port $(PORT)

# Debian's chromium for the UI test (no browser download); installed when we are root.
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "chromium is missing: install Debian's chromium package (the UI test needs it)"; fi; }

# Spark for the heavy stages (insightflow_assets/spark, README "Beyond one machine: Spark"):
# Debian's Java 17 when java is missing (installed when we are root), then the `spark` extra.
spark-deps: install
	@command -v java >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null; \
		else echo "java is missing: install default-jre-headless (Java 17) for the Spark jobs"; fi; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,spark]"

test: install system-deps spark-deps
	$(BIN)/python -m pytest

# Re-run every asset check of a stored run and print a table: make check RUN=run-YYYYMMDD-HHMMSS
check: install
	@test -n "$(RUN)" || { echo "usage: make check RUN=run-YYYYMMDD-HHMMSS (see .venv/bin/insightflow runs)"; exit 2; }
	$(BIN)/insightflow check $(RUN)

# Benchmarks at Instacart scale (minutes, not CI): foundation stages, the whole graph with its
# scaling curve, the peers (pandas, Spark MLlib ALS; Java is installed here when missing), and
# the bytes a run writes to the event log.
bench: spark-deps
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,bench]"
	$(BIN)/python benchmarks/bench_foundation.py
	$(BIN)/python benchmarks/run_scale.py --curve
	$(BIN)/python benchmarks/bench_peers.py
	$(BIN)/python benchmarks/bench_event_log.py

clean:
	rm -rf data .dagster_home/storage .dagster_home/history .dagster_home/schedules .dagster_home/logs
