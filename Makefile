# Two commands for users: `make demo` and `make test`. Everything they need is installed here:
# the virtualenv and Python packages, the Kafka jars (Maven), PostgreSQL and promtool (Debian's
# packages).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The first Python >= 3.11 on PATH (3.11 is what the suite is pinned and tested with).
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && { command -v $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_POSTGRES_PORT ?= 55432
# The dashboard test drives Debian's Chromium through Playwright, which must never download a
# browser of its own.
CHROMIUM ?= /usr/bin/chromium
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
PYTEST_ARGS ?=

.PHONY: help install lint format test unit integration demo bench kafka-jars kafka-up kafka-down \
	postgres-up postgres-down chromium promtool clean soak nemesis stress configuration-doc

help:
	@echo "make demo         run the pipeline locally (Kafka, SQLite, two workers); Ctrl-C stops it"
	@echo "make test         install everything needed, lint, run the whole test suite"
	@echo "make lint         ruff check, ruff format --check, mypy"
	@echo "make unit         offline unit tests only"
	@echo "make integration  tests on the real local Kafka and PostgreSQL"
	@echo "make bench        benchmarks beside their baselines (BENCH_QUICK=1: short run)"
	@echo "make nemesis      random faults under load, judged (SEED=n DURATION=600 seconds)"
	@echo "make stress       workers joining and leaving under load and CPU contention, judged"
	@echo "make soak         200,000 orders with faults, then judged (SOAK_ORDERS=20000: short run)"
	@echo "make kafka-up     start the local broker (prints its bootstrap address)"
	@echo "make kafka-down   stop it"
	@echo "make configuration-doc  regenerate docs/configuration.md from pipeline/settings.py"

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 or newer is needed (python3.11 on PATH)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@# `agents` and `tables` must be ours, not the PyPI packages of the same import names.
	$(BIN)/python -c "import agents, tables, pathlib; \
		assert all(pathlib.Path(m.__file__).resolve().is_relative_to(pathlib.Path('.').resolve()) \
		for m in (agents, tables)), 'foreign agents/tables package installed'"
	touch $@

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The configuration reference is rendered from the settings' declaration; a unit test fails
# when the file is out of date.
configuration-doc: install
	$(BIN)/python -m pipeline.settings > docs/configuration.md

kafka-jars: install
	$(BIN)/python -m pipeline kafka jars

kafka-up: install
	$(BIN)/python -m pipeline kafka up

kafka-down: install
	$(BIN)/python -m pipeline kafka down

postgres-up: install
	$(BIN)/python -m pipeline postgres up --port $(TEST_POSTGRES_PORT) --database pipeline_test

postgres-down: install
	$(BIN)/python -m pipeline postgres down --port $(TEST_POSTGRES_PORT)

unit: install promtool
	$(BIN)/pytest tests/domain tests/unit $(PYTEST_ARGS)

# Debian's Chromium for the dashboard test, installed when missing (as root). When it cannot
# be, the suite still runs and that test fails saying so.
chromium:
	@test -x $(CHROMIUM) || { \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian's chromium for the dashboard test"; \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
				--no-install-recommends chromium fonts-liberation; \
		fi; \
		test -x $(CHROMIUM) || echo "warning: $(CHROMIUM) is missing and could not be installed" \
			"(apt-get install -y chromium as root); the dashboard test will fail"; \
	}

# promtool (Debian's prometheus package) for the tests that check the alert rules in deploy/
# (and the Prometheus server an integration test scrapes a worker with), installed when missing
# (as root). Where systemd runs, the package also starts its own service on port 9090, which the
# tests do not use (`systemctl disable --now prometheus`). When it cannot be, the suite
# still runs and those tests fail saying so.
promtool:
	@command -v promtool >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian's prometheus package for promtool"; \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
				--no-install-recommends prometheus; \
		fi; \
		command -v promtool >/dev/null || echo "warning: promtool is missing and could not be" \
			"installed (apt-get install -y prometheus as root); the alert rule tests will fail"; \
	}

integration: install kafka-jars postgres-up chromium promtool
	TEST_POSTGRES_PORT=$(TEST_POSTGRES_PORT) $(BIN)/pytest tests/integration $(PYTEST_ARGS)

test: lint kafka-jars postgres-up chromium promtool
	TEST_POSTGRES_PORT=$(TEST_POSTGRES_PORT) $(BIN)/pytest tests -ra $(PYTEST_ARGS)

demo: install
	$(BIN)/python -m pipeline demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

bench: install kafka-jars postgres-up
	$(BIN)/python -m bench

# Not part of `make test`: random faults under load for DURATION seconds, judged by the
# independent checker (tests/integration/test_nemesis.py). A failing SEED replays its schedule.
SEED ?=
DURATION ?= 600
NEMESIS_DATABASE ?= postgresql
nemesis: install kafka-jars postgres-up
	TEST_POSTGRES_PORT=$(TEST_POSTGRES_PORT) NEMESIS_SEED=$(SEED) NEMESIS_SECONDS=$(DURATION) \
		NEMESIS_DATABASE=$(NEMESIS_DATABASE) $(BIN)/pytest tests/integration/test_nemesis.py \
		-m nemesis -s -ra $(PYTEST_ARGS)

# Not part of `make test`: workers joining and leaving round after round under load and CPU
# contention, judged (tests/integration/test_stress.py). STRESS_ROUNDS=6 by default.
STRESS_ROUNDS ?= 6
stress: install kafka-jars postgres-up
	TEST_POSTGRES_PORT=$(TEST_POSTGRES_PORT) STRESS_ROUNDS=$(STRESS_ROUNDS) $(BIN)/pytest \
		tests/integration/test_stress.py -m stress -s -ra $(PYTEST_ARGS)

# Not part of `make test`: about half an hour on two cores (bench/soak.py says what it does).
soak: install kafka-jars postgres-up
	$(BIN)/python -m bench.soak
