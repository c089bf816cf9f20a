# `make demo` and `make test` set everything up on a fresh machine: a virtual environment in
# .venv with the pinned requirements and this package installed in editable mode.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

test: install
	$(PY) -m pytest tests

demo: install
	$(PY) -m experiments.demo

bench: install
	$(PY) -m experiments.benchmark_ops
	$(PY) -m experiments.benchmark_models
	$(PY) -m experiments.benchmark_data
	$(PY) -m experiments.benchmark_pretrain
	$(PY) -m experiments.benchmark_sparse

clean:
	rm -rf $(VENV) .pytest_cache
