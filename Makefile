# Two commands matter: `make book` builds the HTML book, `make test` runs every test.
# Both create .venv with the machine's python3 and install the pinned, tested versions.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Quick mode keeps every chapter small enough for 2 CPU cores; QUICK=0 runs full sizes.
QUICK ?= 1

.PHONY: book test lint unit venv clean

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" "setuptools>=64"
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

book: $(STAMP)
	rm -rf _build
	SSD_TUTORIAL_QUICK=$(QUICK) $(VENV)/bin/jupyter-book build . --toc book/_toc.yml \
		--config _config.yml -W --keep-going --all

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

unit: $(STAMP)
	$(PY) -m pytest -m "not slow"

test: lint $(STAMP)
	SSD_TUTORIAL_QUICK=1 $(PY) -m pytest

clean:
	rm -rf _build .pytest_cache .ruff_cache .hypothesis
