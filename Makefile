# `make demo` and `make test` work on a fresh machine: both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-gpu lint bench clean

setup: $(STAMP)

# torch is pinned to the CPU build that lies on this machine's disk; any other version downloads GBs.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	rm -rf out/demo
	$(BIN)/hrdeploy export lite_hrnet_18 -o out/demo/lite_hrnet_18 --dynamic-batch

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not gpu and not modelopt" $(PYTEST_ARGS)

test-gpu: setup
	$(BIN)/pip install -q -e '.[tensorrt]'
	$(BIN)/python -m pytest -q -rs -m gpu

bench: setup
	$(BIN)/python benchmarks/run_zoo.py

clean:
	rm -rf out pred .pytest_cache .ruff_cache

# ModelOpt (the int8 extra) lives in its own environment: installing nvidia-modelopt[onnx] into .venv would
# downgrade onnx and add onnxruntime-gpu over onnxruntime. About a minute to set up from the local index.
.PHONY: test-modelopt
test-modelopt:
	test -x .venv-modelopt/bin/python || $(PY) -m venv .venv-modelopt
	.venv-modelopt/bin/pip install -q --upgrade pip
	.venv-modelopt/bin/pip install -q torch==2.13.0
	.venv-modelopt/bin/pip install -q -e '.[int8,dev]'
	.venv-modelopt/bin/python -m pytest -q -rs -m modelopt $(PYTEST_ARGS)
