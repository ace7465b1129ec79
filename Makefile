# The two set-up commands: `make demo` (the main job on embedded defaults) and `make test`.
# Each creates .venv if missing and installs the project into it (CPU torch, pinned).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Offline always (shared/STACK.md); PREFECT_HOME stays inside the project.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export DVC_NO_ANALYTICS=1
export GX_ANALYTICS_ENABLED=false
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90
export PREFECT_HOME=$(CURDIR)/.prefect
export MPLBACKEND=Agg
export MLFLOW_DISABLE_TELEMETRY=true
export DO_NOT_TRACK=true

.PHONY: demo test test-fast install benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and exactly pinned: a looser spec pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mesa demo

# Two processes by default (pytest-xdist): a module per worker at a time, the costliest first
# (tests/conftest.py), each worker with its own micro world and Prefect server and its numerical
# libraries pinned to its share of the cores. One process (TEST_WORKERS=1) leaves the cores idle
# while tests wait on subprocesses and servers: about 55 minutes instead of about 32 on 2 cores.
TEST_WORKERS ?= 2
ifeq ($(TEST_WORKERS),1)
XDIST :=
else
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
endif

# Everything (what CI runs); the 25 slowest tests are listed at the end.
test: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) --durations=25

# The inner loop: every test not marked slow (unit tests and the quick integration tests).
test-fast: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "not slow" --durations=25

benchmark: $(STAMP)
	$(BIN)/python benchmarks/read_shards.py

clean:
	rm -rf .prefect reports data/raw.building
