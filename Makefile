# make demo  — run the main job end to end on the embedded default (no cloud account)
# make test  — install everything the tests need and run them
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install system-deps test-servers clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Installs every role's extra (`test` includes them all) at the versions in constraints.txt,
# so CI runs what was tested. Adding a dependency: put it in setup.py (the role's extra, or
# install_requires), install it, then regenerate constraints.txt from the test environment:
#   $(PY) -m pip freeze --exclude-editable | grep -vi '^sealbeam' >> constraints.txt (after
#   its 4-line header); the coordinator regenerates it once more after merging branches.
$(STAMP): $(PY) setup.py constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

demo: install
	$(VENV)/bin/sealbeam demo

test-servers: system-deps
	bash scripts/install-test-servers.sh

test: install system-deps test-servers
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .sealbeam demo-out build *.egg-info
