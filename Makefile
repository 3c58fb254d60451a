# Everything a user or CI runs. The virtual environment lives at .venv, or at
# $(DITOD_VENV) when set (CI reuses one between runs).
VENV := $(if $(DITOD_VENV),$(DITOD_VENV),.venv)
PYTHON := $(VENV)/bin/python
export DITOD_VENV := $(abspath $(VENV))

.PHONY: setup lint test test-fast test-gpu demo bench bench-text clean

setup:
	@bash tools/setup_env.sh

# ruff, configured in pyproject.toml (CI runs it before the tests).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup
	$(PYTHON) -m pytest -q tests

# Skips the slower end-to-end tests (CI runs them).
test-fast: setup
	$(PYTHON) -m pytest -q -m "not slow" tests

# The checks that need a CUDA device (pytest -m gpu). No setup: on a GPU machine
# without a package registry it installs the wheels of .whl/ (tools/gpu_wheels.sh).
test-gpu:
	bash tools/gpu_check.sh

demo: setup
	$(PYTHON) tools/demo.py

bench: setup
	$(PYTHON) tools/bench.py

bench-text: setup
	$(PYTHON) tools/bench_text.py

clean:
	rm -rf output .pytest_cache
