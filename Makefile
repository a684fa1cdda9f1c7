# ASD Studio: `make test` and `make demo` work from a fresh clone with only Python 3.11 and make.
PYTHON ?= python3.11
# CPU build from PyPI/local disk; on a GPU box: make TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.asd-installed
PROMPT ?= a red mug

.PHONY: test demo addon lint bench-protocol clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test,dev]"
	@touch $@

test: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/asd demo --prompt "$(PROMPT)"

addon: $(STAMP)
	$(BIN)/python blender_addon/build.py

lint: $(STAMP)
	$(BIN)/ruff check .

bench-protocol: $(STAMP)
	$(BIN)/asd bench protocol

clean:
	rm -rf $(VENV) build dist outputs .pytest_cache .hypothesis
