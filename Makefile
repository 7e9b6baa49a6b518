# Set-up and the two everyday jobs. `make demo` and `make test` each install what they need.
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,ray

.PHONY: install demo test lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m pip install -q --disable-pip-version-check uv
	python3 -m uv venv -q --allow-existing --python python3 $(VENV)
	python3 -m uv pip install -q --native-tls --python $(BIN)/python -e '.[$(EXTRAS)]'
	touch $@

demo: install
	. $(BIN)/activate && dvc repro

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc
