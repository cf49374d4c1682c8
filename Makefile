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

LOCK := requirements.lock
# Our distributions: installed from the tree (editable), never pinned in the lock.
DISTS := hubless-volume hubless-client hubless-fetcher hubless-server hubless-fakehub
# requirements.in -> requirements.lock: every third-party package pinned, with its sha256.
# The existing pins are kept unless an input changed (or LOCK_ARGS="--upgrade-package NAME").
PIP_COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes \
	--strip-extras --no-allow-unsafe $(foreach d,$(DISTS),--unsafe-package $(d)) \
	--no-emit-index-url --no-emit-find-links --no-emit-trusted-host

.PHONY: help setup test lint fetch run serve demo protos protos-check protos-lint bench bench-smoke soak clean lock lock-check base-digests

help:  ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): volume/pyproject.toml fetcher/pyproject.toml server/pyproject.toml clients/python/pyproject.toml tools/fakehub/pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# Every third-party package (dev tools included) at the lock's version, checked against its
	# sha256; torch is the local CPU wheel (torch==2.13.0+cpu), never the multi-GB CUDA build.
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	# Our distributions, editable, from the tree: no resolution, nothing downloaded.
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e ./volume -e ./clients/python \
		-e ./fetcher -e './server[onnx,otel]' -e './tools/fakehub[tiny,real]'
	$(PY) -m pip check
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

demo: $(STAMP)  ## Fully offline: local mirror -> fetch -> serve -> one call of every RPC (KEEP=DIR keeps the volume)
	$(PY) scripts/demo.py $(if $(KEEP),--models-dir $(KEEP))

bench: $(STAMP)  ## Benchmarks (not tests): prints tables, writes bench/results/
	$(PY) -m pip install --quiet -r bench/requirements.txt && $(PY) -m bench.run $(BENCH_ARGS)

bench-smoke: $(STAMP)  ## CI: the benchmark runs (real MiniLM; hubless ONNX/PyTorch, in-process), seconds per system
	$(PY) -m pip install --quiet -r bench/requirements.txt && $(PY) -m bench.run --smoke $(BENCH_ARGS)

soak: $(STAMP)  ## Load and fault soak (not tests, not CI): writes bench/results/soak.{json,md}
	$(PY) -m bench.soak $(SOAK_ARGS)

lock: $(STAMP)  ## Re-resolve requirements.lock from requirements.in (pins and sha256s)
	$(PIP_COMPILE) $(LOCK_ARGS) --output-file $(LOCK) requirements.in

lock-check: $(STAMP)  ## Fail if requirements.lock is not what `make lock` writes (network: PyPI)
	@check=$$(mktemp -p . .requirements.lock.XXXXXX) && trap 'rm -f "$$check"' EXIT && \
	cp $(LOCK) "$$check" && $(PIP_COMPILE) --output-file "$$check" requirements.in && \
	{ diff -u $(LOCK) "$$check" || \
		{ echo "$(LOCK) is stale: run 'make lock' and commit it" >&2; exit 1; }; }

base-digests:  ## Pin the Dockerfiles' base image to its digest (docker buildx or crane; registry)
	sh deploy/base-digests.sh Dockerfile.fetcher Dockerfile.server

clean:  ## Remove caches (keeps .venv and models)
	rm -rf .pytest_cache .ruff_cache
