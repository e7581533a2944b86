# Two commands for a fresh machine:
#   make demo   installs into .venv (with PyTorch, pinned by constraints.txt) and runs the demo end to end
#   make test   installs into .venv (with test extras) and runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test test-fast bench clean

$(VENV)/.core: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt -e '.[torch,plot]' numpy
	touch $@

$(VENV)/.test: $(VENV)/.core constraints.txt
	$(PIP) install -c constraints.txt -e '.[test,torch]'
	touch $@

demo: $(VENV)/.core
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/demo.sh

test: $(VENV)/.test
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest

test-fast: $(VENV)/.test
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -m "not slow"

bench: $(VENV)/.test
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) benchmarks/bench_fixed_files.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
