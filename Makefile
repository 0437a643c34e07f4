PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/quickstart.toml

.PHONY: run test test-slow install clean

$(BIN)/lab: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(BIN)/lab

install: $(BIN)/lab

run: install
	$(BIN)/lab launch $(CONFIG)

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV)
