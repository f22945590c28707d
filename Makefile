# kdistill: `make demo` runs a real distillation on Fashion-MNIST; `make test` runs lint, types and the test suite.
# Both create (or reuse) the virtual environment in .venv and install what they need.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION_DIR := /usr/share/datasets/fashion-mnist
# pytest-xdist worker processes for `make test` (auto: one per core, each with cores/workers torch threads: the
# subprocess, sleep and I/O waits of the end-to-end tests overlap with the compute of others); 0 runs in this process
TEST_WORKERS ?= auto

.PHONY: demo test docs venv data postgres clean

venv: $(VENV)/.installed

# torch and torchvision are pinned as a matched pair (torchvision 0.29 requires torch 2.14).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Fashion-MNIST from Debian's package where apt is available (no download needed at run time).
data:
	@sh scripts/get-fashion-mnist.sh

# PostgreSQL from Debian where apt is available: the sweep tests start a throw-away server from it.
postgres:
	@sh scripts/get-postgresql.sh

demo: venv data
	$(VENV)/bin/kdistill demo $(if $(wildcard $(FASHION_DIR)/train-images-idx3-ubyte.gz),,--set data.download=true) $(ARGS)

# Lint, format check, type check and the docs build first (seconds), then the tests.
test: venv data postgres
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet -d build/docs-site
	$(PY) -m pytest -n $(TEST_WORKERS) $(ARGS)

# The docs site (mkdocs.yml, docs/) into site/; --strict makes a broken link or API reference an error.
# Preview while editing: $(VENV)/bin/mkdocs serve
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) runs .pytest_cache site build/docs-site
