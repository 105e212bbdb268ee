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

install: $(BIN)/python
	$(BIN)/pip install $(TORCH_PIN)
	$(BIN)/pip install -e '.[dev]'

protos:
	$(BIN)/python -m proto.build

check-protos:
	$(BIN)/python -m proto.build --check

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy textinv export server client proto tests

unit:
	$(BIN)/python -m pytest -q

test: install check-protos lint typecheck unit

demo: install
	$(BIN)/textinv demo
