# make demo  — run the main job end to end on the embedded default (no cloud account)
# make test  — install everything the tests need and run them
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install system-deps clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) setup.py
	$(PY) -m pip install --quiet -e '.[test,postgres,pubsub,dataflow]'
	touch $(STAMP)

install: $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

demo: install
	$(VENV)/bin/sealbeam demo

test: install system-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .sealbeam demo-out build *.egg-info
