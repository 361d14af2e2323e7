# Every target bootstraps .venv on first use; nothing needs installing by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0

.PHONY: test test-other-python demo lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU build lies on local disk; unpinned, pip would
	# fetch a multi-GB CUDA build for anything that depends on torch.
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[dev,rl,local,ray,redis]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/surge demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

# The oldest Python we declare, without the torch extras (the CPU torch on this disk is
# built for 3.11 only): make test-other-python OTHER_PYTHON=/path/to/python3.10
OTHER_PYTHON ?= python3.10
OTHER_VENV := .venv-other
test-other-python:
	test -x $(OTHER_VENV)/bin/python || $(OTHER_PYTHON) -m venv $(OTHER_VENV)
	$(OTHER_VENV)/bin/python -m pip install -q -e '.[dev]'
	$(OTHER_VENV)/bin/python -m pytest -q --ignore=tests/rl

bench: $(STAMP)
	$(PY) benchmarks/engine_overhead.py
	$(PY) benchmarks/seven_calls.py
	$(PY) benchmarks/memory_stream.py

clean:
	rm -rf $(VENV) $(OTHER_VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
