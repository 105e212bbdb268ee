# One command installs everything and runs the whole test suite: `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch lies on the disk of CPU machines: install that pin first, or any other
# version pulls a multi-gigabyte CUDA build (see DEVELOPERS.md).
TORCH_PIN ?= torch==2.13.0

.PHONY: install test lint typecheck unit demo protos check-protos

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# buf (the protobuf linter) ships as a binary inside this npm package.
BUF_VERSION ?= 1.75.0
BUF := .tools/node_modules/.bin/buf

install: $(BIN)/python
	$(BIN)/pip install $(TORCH_PIN)
	# The thin client is its own distribution (client/); the full one depends on it.
	$(BIN)/pip install -e ./client -e '.[dev]'

$(BUF):
	npm install --no-save --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

protos:
	$(BIN)/python scripts/protos.py

check-protos:
	$(BIN)/python scripts/protos.py --check

# buf is a lint tool only: `make demo` needs neither npm nor buf.
lint: $(BUF)
	$(BUF) lint proto
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy

unit:
	$(BIN)/python -m pytest -q

test: install check-protos lint typecheck unit

demo: install
	$(BIN)/textinv demo
