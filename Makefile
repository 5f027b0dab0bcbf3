# loyalty-consumer developer commands. `make test` is what CI runs (via .ci/run).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: all install lint typecheck test pytest kafka-up kafka-down pg-up pg-down toxiproxy-up toxiproxy-down demo bench bench-quick bench-docs chaos schemas clean

all: test

# The C source too: an editable install builds consumer/_jsonshape once, not on import.
$(BIN)/loyalty-consumer: pyproject.toml consumer/_jsonshape.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

install: $(BIN)/loyalty-consumer

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# Sets everything up, starts the services the tests need (Kafka, PostgreSQL, and Toxiproxy,
# which scripts/toxiproxy.sh builds once from its Go module), runs lint, type check and
# every test, and stops what it started.
test: install
	bash scripts/test.sh $(ARGS)

# Only pytest, against services you started yourself (make kafka-up pg-up).
pytest: install
	$(BIN)/pytest $(ARGS)

# The README's first command: the reference event through to a printed notification.
demo: install
	bash scripts/demo.sh

# Replicas killed, frozen into zombies and restarted while the broker and PostgreSQL restart
# under them; then the audit. Its own broker and database; ARGS="--seed N ..." reproduces a run.
chaos: install
	$(BIN)/python -m tests.chaos $(ARGS)

# Performance (docs/performance.md): starts its own broker (BENCH_KAFKA_PORT, 39092) and
# PostgreSQL, measures the worker against the passthrough ceiling, a naive loop and a FastStream
# job in interleaved rounds, checks every run's outputs, stops both. A full run also rewrites
# the generated blocks of docs/performance.md and the README; bench-docs does only that.
$(VENV)/.bench-extra: pyproject.toml $(BIN)/loyalty-consumer
	$(BIN)/pip install -q -e ".[dev,bench]"
	@touch $@

bench: $(VENV)/.bench-extra
	$(BIN)/python -m bench $(ARGS)

bench-quick: $(VENV)/.bench-extra
	$(BIN)/python -m bench --quick $(ARGS)

bench-docs: install
	$(BIN)/python -m bench.docs $(ARGS)

kafka-up:
	bash scripts/kafka.sh up

kafka-down:
	bash scripts/kafka.sh down

pg-up:
	@bash scripts/pg.sh up

pg-down:
	bash scripts/pg.sh down

# The TCP fault proxy of the network-fault tests (docs/proof.md); prints its API URL.
toxiproxy-up:
	@bash scripts/toxiproxy.sh up

toxiproxy-down:
	bash scripts/toxiproxy.sh down

clean:
	bash scripts/kafka.sh down
	bash scripts/pg.sh down
	bash scripts/toxiproxy.sh down
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
