# The two commands a newcomer runs:  make run   and   make test
PY ?= python3
PIP = $(PY) -m pip
NETNS = scripts/netns-run

.PHONY: install install-dev run test test-unit bench loadtest down protos
SCENARIO ?= farm

# torch first, pinned: it takes the local CPU wheel; an unpinned torch pulls GBs of CUDA builds.
install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[serve]'

install-dev:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[serve,dev]'

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
