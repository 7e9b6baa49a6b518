# Set-up and the two everyday jobs. `make demo` and `make test` each install what they need.
# Everything is written inside the checkout: the virtual environment, the package caches and
# the tools' homes; nothing goes into the system's or the user's Python.
VENV ?= .venv
PYTHON ?= python3
EXTRAS ?= dev,ray,jax
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

.PHONY: install demo test lint

install: $(VENV)/.installed $(RAY_AUTH_TOKEN_PATH)

$(RAY_AUTH_TOKEN_PATH):
	@mkdir -p $(dir $@)
	@umask 077 && $(PYTHON) -c 'import secrets; import sys; sys.stdout.write(secrets.token_hex(32))' > $@

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
	  { echo "myelomet needs Python >= 3.11 as '$(PYTHON)' (set PYTHON=/path/to/python3.11)"; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || \
	  { echo "'$(PYTHON) -m venv' is missing: install it (Debian/Ubuntu: apt-get install python3-venv)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv
	$(BIN)/uv pip install -q --native-tls --python $(BIN)/python -e '.[$(EXTRAS)]'
	touch $@

demo: install
	dvc repro

lint: install
	ruff check .
	ruff format --check .

# The whole suite on TensorFlow (the default backend), then its backend-agnostic subset on JAX.
test: lint
	pytest -q --durations=15; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; \
	  [ $$rc -eq 0 ] || exit $$rc; \
	  KERAS_BACKEND=jax pytest -q -m backends; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no JAX tests collected"; rc=0; fi; exit $$rc
