# Titan Execution Service. `make run` and `make test` work on a fresh machine with python3
# and make: they create .venv and install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config/default.json

.PHONY: run demo test bench lint format clean

$(BIN)/python:
	@echo "make: creating $(VENV) and installing the service into it (first time only, about 30 s)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Installed state is keyed on pyproject.toml: editing it reinstalls.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "make: installing dependencies into $(VENV)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	@echo "make: installing dependencies and test tools into $(VENV)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	@echo "make: the CLI is $(BIN)/titan (or: source $(BIN)/activate, then titan); Ctrl-C stops"
	$(BIN)/titan run --config $(CONFIG)

# `make run` plus the example strategy (ipc/examples/demo_strategy.py) in the foreground.
# The service is stopped with SIGINT when the strategy ends or on Ctrl-C; SIGTERM follows
# 5 s later only if it is still starting (sh starts background jobs with SIGINT ignored,
# so a Ctrl-C before the service installs its handler would be lost).
# DEMO_ARGS go to the strategy, e.g. `make demo DEMO_ARGS="--duration 60 --seed 1"`.
# The same overrides the service reads (TITAN_API_PORT, TITAN_IPC_SOCKET) apply here.
DEMO_API ?= http://127.0.0.1:$(or $(TITAN_API_PORT),8080)
DEMO_SOCKET ?= $(or $(TITAN_IPC_SOCKET),titan-ipc.sock)
DEMO_ARGS ?=
DEMO_START_LIMIT_S ?= 30

demo: $(VENV)/.installed
	@$(BIN)/titan run --config $(CONFIG) & pid=$$!; \
	stop() { trap - EXIT INT TERM; kill -INT $$pid 2>/dev/null; \
		( sleep 5; kill -TERM $$pid ) >/dev/null 2>&1 & dog=$$!; \
		wait $$pid; kill $$dog 2>/dev/null; }; \
	trap stop EXIT; trap 'exit 130' INT TERM; \
	echo "demo: waiting for $(DEMO_API)/api/health (at most $(DEMO_START_LIMIT_S) s)"; \
	tries=$$(( $(DEMO_START_LIMIT_S) * 5 )); \
	until $(BIN)/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
			$(DEMO_API)/api/health 2>/dev/null; do \
		kill -0 $$pid 2>/dev/null || { echo "demo: the service stopped during start-up" >&2; exit 1; }; \
		tries=$$((tries - 1)); \
		[ $$tries -gt 0 ] || { echo "demo: no healthy answer from $(DEMO_API) within $(DEMO_START_LIMIT_S) s" >&2; exit 1; }; \
		sleep 0.2; \
	done; \
	$(BIN)/python -m ipc.examples.demo_strategy --socket $(DEMO_SOCKET) --api $(DEMO_API) $(DEMO_ARGS)

# The suite runs a worker per CPU (pytest-xdist): one pytest process keeps one CPU busy,
# so CI's two cores finish it in about half the time.
# `$(BIN)/python -m pytest tests/PATH` still runs a part of it in one process.
test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n auto

# Benchmarks print measured figures next to a floor measured in the same run.
bench: $(VENV)/.installed-test
	@for b in tests/bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
