# Set-up and the two everyday jobs. `make demo` and `make test` each install what they need.
# Everything is written inside the checkout: the virtual environment, the package caches and
# the tools' homes; nothing goes into the system's or the user's Python.
VENV ?= .venv
PYTHON ?= python3
# The extras `make install` puts in the venv: those requirements.lock pins.
EXTRAS := train serve group dev ray jax
LOCK := requirements.lock
BIN := $(abspath $(VENV))/bin
CACHE := $(CURDIR)/.cache

# The venv's tools come first, whether or not it is activated; stages call `myelomet`.
export PATH := $(BIN):$(PATH)
unexport VIRTUAL_ENV PYTHONPATH PYTHONHOME CONDA_PREFIX
export UV_CACHE_DIR ?= $(CACHE)/uv
export PIP_CACHE_DIR ?= $(CACHE)/pip
export XDG_CACHE_HOME ?= $(CACHE)
export XDG_CONFIG_HOME ?= $(CACHE)/config
export XDG_DATA_HOME ?= $(CACHE)/share
export MPLCONFIGDIR ?= $(CACHE)/matplotlib
export KERAS_HOME ?= $(CACHE)/keras
export PREFECT_HOME ?= $(CURDIR)/.prefect
export DVC_SITE_CACHE_DIR ?= $(CACHE)/dvc
# A local Ray cluster (training.executor: ray, and its test) wants an auth token; without
# this one it writes ~/.ray/auth_token.
export RAY_AUTH_TOKEN_PATH ?= $(CACHE)/ray/auth_token

.PHONY: install lock check-lock demo test lint group-server

install: $(VENV)/.installed $(RAY_AUTH_TOKEN_PATH)

$(RAY_AUTH_TOKEN_PATH):
	@mkdir -p $(dir $@)
	@umask 077 && $(PYTHON) -c 'import secrets; import sys; sys.stdout.write(secrets.token_hex(32))' > $@

# The venv holds exactly the versions of $(LOCK) (`uv pip sync`), then the project itself,
# editable; uv is bootstrapped with pip at its locked version.
$(VENV)/.installed: $(LOCK) pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip sync -q --native-tls --python $(BIN)/python $(LOCK)
	$(BIN)/uv pip install -q --native-tls --python $(BIN)/python --no-deps -e .
	touch $@

$(BIN)/uv:
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 14))' 2>/dev/null || \
	  { echo "myelomet needs Python 3.11 to 3.13 as '$(PYTHON)' (set PYTHON=/path/to/python3.11)"; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || \
	  { echo "'$(PYTHON) -m venv' is missing: install it (Debian/Ubuntu: apt-get install python3-venv)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$$(grep '^uv==' $(LOCK))"

# Re-resolve $(LOCK) from pyproject.toml's ranges, for every platform and Python 3.11 to 3.13,
# keeping each locked version that still fits; then install it. Newer versions:
# `make lock LOCK_FLAGS=--upgrade`, or `LOCK_FLAGS="--upgrade-package keras"` for one.
lock: | $(BIN)/uv
	$(BIN)/uv pip compile -q --native-tls pyproject.toml $(addprefix --extra ,$(EXTRAS)) \
	  --universal --fork-strategy fewest --python-version 3.11 $(LOCK_FLAGS) -o $(LOCK)
	$(MAKE) install

# `uv pip freeze` of the venv against $(LOCK): the same packages at the same versions.
check-lock: install
	$(BIN)/uv pip freeze --exclude-editable --python $(BIN)/python | $(BIN)/python .ci/check_lock.py $(LOCK)

demo: install
	dvc repro

# A throwaway group MLflow server for trying the group setup (README, "For a group"):
# PostgreSQL and `mlflow server` with basic auth and proxied artifacts on 127.0.0.1; prints
# the MLFLOW_TRACKING_* lines to export; Ctrl-C stops it and deletes its data. Needs the
# Debian package postgresql.
GROUP_SERVER_PORT ?= 5000
group-server: install
	$(BIN)/python -m myelomet.group_server --port $(GROUP_SERVER_PORT)

lint: install
	ruff check .
	ruff format --check .
	lint-imports

# The whole suite on TensorFlow (the default backend), then its backend-agnostic subset on JAX,
# each in a random order (pytest-randomly), so a test that passes only after another fails.
# The seed is printed; `make test SEED=<n>` repeats an order. CI also checks the lock.
# Tests run in one worker per core, up to 4 (pytest-xdist, `make test WORKERS=0` for none):
# a module's tests, the flow tests and the group's services each stay on one worker
# (tests/conftest.py, `--dist loadgroup`).
WORKERS ?= auto
PARALLEL := $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --maxprocesses 4 --dist loadgroup)
ifndef SEED
SEED := $(shell od -An -N2 -tu2 /dev/urandom | tr -d ' ')
endif
RANDOM_ORDER := -p randomly --randomly-seed=$(SEED)
test: lint $(if $(CI),check-lock)
	@echo "test order: --randomly-seed=$(SEED) (make test SEED=$(SEED) repeats it)"
	pytest -q $(RANDOM_ORDER) $(PARALLEL) --durations=15; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; \
	  [ $$rc -eq 0 ] || exit $$rc; \
	  KERAS_BACKEND=jax pytest -q $(RANDOM_ORDER) $(PARALLEL) -m backends; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no JAX tests collected"; rc=0; fi; exit $$rc
