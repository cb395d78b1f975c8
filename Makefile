# The README's two commands: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= --disable-pip-version-check -q

.PHONY: demo test lint bench clean

$(VENV)/.stamp-base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -e .
	touch $@

$(VENV)/.stamp-test: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -e '.[test]'
	touch $@ $(VENV)/.stamp-base

$(VENV)/.stamp-bench: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -e '.[bench]'
	touch $@ $(VENV)/.stamp-base

demo: $(VENV)/.stamp-base
	$(VENV)/bin/digitlab demo

test: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

bench: $(VENV)/.stamp-bench
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
