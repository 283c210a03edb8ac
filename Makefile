# `make demo` and `make test` work on a fresh machine: both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-gpu lint bench clean setup-serve test-serve serve-demo

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
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not gpu and not modelopt and not serve" $(PYTEST_ARGS)
	$(MAKE) test-serve PYTEST_ARGS=

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

# The serve extra (NVIDIA PyTriton, which bundles tritonserver) lives in its own environment made with Debian's
# python3.11: PyTriton's Python-backend stub for 3.11 links the system's libpython3.11.so.1.0 (Debian's 3.11.2),
# and with another 3.11 patch release's standard library (e.g. pyenv's 3.11.7) it fails at model load
# ('_thread.RLock' object has no attribute '_recursion_count').
SERVE_PY ?= /usr/bin/python3.11
SERVE_VENV := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed

setup-serve: $(SERVE_STAMP)

$(SERVE_STAMP): pyproject.toml
	@test -x $(SERVE_PY) || { echo "error: $(SERVE_PY) not found; install Debian's python3.11 and python3.11-venv (apt-get install python3.11-venv) or set SERVE_PY"; exit 2; }
	test -x $(SERVE_VENV)/bin/python || $(SERVE_PY) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install -q --upgrade pip
	$(SERVE_VENV)/bin/pip install -q torch==2.13.0
	$(SERVE_VENV)/bin/pip install -q -e '.[serve]' pytest
	touch $(SERVE_STAMP)

test-serve: setup-serve
	$(SERVE_VENV)/bin/python -m pytest -q -rs -p no:cacheprovider -m serve tests/test_serve.py tests/test_serve_pipeline.py $(PYTEST_ARGS)

# Serve lite_hrnet_18 (256x192) on PyTriton, load it at concurrency 1,4,16 and compare with in-process calls.
serve-demo: setup-serve
	$(SERVE_VENV)/bin/python benchmarks/bench_serve.py --out out/serve-demo --duration 5 --no-results
