# hubless: one place for every developer and CI command. Everything runs from .venv.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.hubless-setup
MODELS_DIR ?= $(CURDIR)/models
PROTO_OUT := clients/python/src

.PHONY: help setup test lint fetch run serve demo protos protos-check protos-lint bench bench-smoke soak clean

help:  ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): volume/pyproject.toml fetcher/pyproject.toml server/pyproject.toml clients/python/pyproject.toml tools/fakehub/pyproject.toml requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the local CPU wheel, never the multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e './volume[signing]' -e ./clients/python -e ./fetcher -e './server[onnx]' -e ./tools/fakehub -r requirements-dev.txt
	touch $(STAMP)

setup: $(STAMP)  ## Create .venv with the packages (editable) and dev tools

protos: $(STAMP)  ## Regenerate the Python gRPC stubs from protos/
	rm -rf $(PROTO_OUT)/hubless
	mkdir -p $(PROTO_OUT)/hubless/v1
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) \
		--grpc_python_out=$(PROTO_OUT) protos/hubless/v1/*.proto
	touch $(PROTO_OUT)/hubless/__init__.py $(PROTO_OUT)/hubless/v1/__init__.py

protos-check: protos  ## Fail if the committed stubs differ from what protos/ generates
	@git diff --exit-code --stat -- $(PROTO_OUT)/hubless || \
		(echo "generated stubs are stale: run 'make protos' and commit" >&2; exit 1)
	@test -z "$$(git status --porcelain -- $(PROTO_OUT)/hubless)" || \
		(echo "untracked generated stubs: run 'make protos' and commit" >&2; exit 1)

protos-lint: $(STAMP)  ## buf lint (STANDARD) and buf breaking against the frozen v1 image
	$(BIN)/buf lint protos
	$(BIN)/buf breaking protos --against protos/hubless-v1.binpb

lint: $(STAMP)  ## ruff, and lint-imports (the server's layers contract)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: $(STAMP)  ## Run the whole test suite (offline)
	$(BIN)/pytest

fetch: $(STAMP)  ## Download the default catalog into $(MODELS_DIR)
	$(BIN)/hubless-fetch fetch --models-dir $(MODELS_DIR)

serve: $(STAMP)  ## Serve $(MODELS_DIR) offline on :50051
	$(BIN)/hubless-serve --models-dir $(MODELS_DIR)

run: fetch serve  ## Main job: set up, fetch the default catalog, serve it

demo: $(STAMP)  ## Fully offline: local mirror -> fetch -> serve -> one call of every RPC
	$(PY) scripts/demo.py

bench: $(STAMP)  ## Benchmarks (not tests): prints tables, writes bench/results/
	$(PY) -m pip install --quiet -r bench/requirements.txt && $(PY) bench/run.py $(BENCH_ARGS)

bench-smoke: $(STAMP)  ## CI: the benchmark runs (real MiniLM; hubless ONNX/PyTorch, in-process), seconds per system
	$(PY) -m pip install --quiet -r bench/requirements.txt && $(PY) bench/run.py --smoke $(BENCH_ARGS)

soak: $(STAMP)  ## Load and fault soak (not tests, not CI): writes bench/results/soak.{json,md}
	$(PY) bench/soak.py $(SOAK_ARGS)

clean:  ## Remove caches (keeps .venv and models)
	rm -rf .pytest_cache .ruff_cache
