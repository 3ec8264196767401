# Two commands do all the set-up: `make run` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch, pinned; pip's configured index decides the build (CPU or CUDA): see the README
# ("CUDA") for TORCH_SPEC and TORCH_INDEX.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned, so the range in pyproject.toml is already met and pip pulls no other build.
	$(BIN)/pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/pip install -e '.[dev,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/torchlr train --impl both --device auto

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) build *.egg-info
