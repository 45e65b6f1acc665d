# Two commands matter: `make book` builds the HTML book, `make test` runs every test.
# Both create .venv with the machine's python3 and install the pinned, tested versions.

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Quick mode keeps every chapter small enough for 2 CPU cores; QUICK=0 runs full sizes.
QUICK ?= 1
BUILD_BOOK := $(VENV)/bin/jupyter-book build . --toc book/_toc.yml --config _config.yml -W --keep-going
# The model the chapters train once and share (ssd_tutorial.zoo), kept with the build.
export SSD_TUTORIAL_CACHE := $(CURDIR)/_build/cache
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# onnxruntime-web for the live detector page (book/live_detector.md), at the version that
# package-lock.json pins; the book build copies the files it needs (book/_ext/live_detector.py).
NPM_STAMP := node_modules/.package-lock.json

.PHONY: book test lint unit notebooks browser-deps npm-deps venv clean bench

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" "setuptools>=64"
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

npm-deps: $(NPM_STAMP)

$(NPM_STAMP): package.json package-lock.json
	command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq npm >/dev/null; }
	npm ci --no-audit --no-fund
	touch $(NPM_STAMP)

# A clean _build (and so an empty jupyter-cache): every chapter is executed.
book: $(STAMP) $(NPM_STAMP)
	rm -rf _build
	SSD_TUTORIAL_QUICK=$(QUICK) $(BUILD_BOOK)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

unit: $(STAMP)
	$(PY) -m pytest -m "not slow"

browser-deps:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# nbval runs every chapter once (quick mode) and stores the executed chapters in the book's
# jupyter-cache (conftest.py); the book build then renders them without running them again,
# and the log check below proves it. The browser tests read the built pages. The build is in
# quick mode too, so that the live detector page finds the model the chapters trained.
notebooks: $(STAMP) $(NPM_STAMP)
	rm -rf _build
	SSD_TUTORIAL_QUICK=1 $(PY) -m pytest --nbval-lax --nbval-current-env notebooks
	mkdir -p _build
	SSD_TUTORIAL_QUICK=1 $(BUILD_BOOK) 2>&1 | tee _build/book.log
	! grep -n "Executing notebook" _build/book.log

test: lint browser-deps $(STAMP)
	$(PY) -m pytest -m "not browser"
	$(MAKE) notebooks
	$(PY) -m pytest -m browser

# Ours against torchvision's SSD on this machine (benchmarks/README.md); writes
# benchmarks/RESULTS.md, which the book's appendix shows. QUICK=0 times longer. Then the
# tiny SSD's learning speed, two recipes side by side (its own section of RESULTS.md).
bench: $(STAMP)
	$(PY) benchmarks/bench_all.py --write $(if $(filter 1,$(QUICK)),--quick,)
	$(PY) benchmarks/bench_learning.py --write

clean:
	rm -rf _build .pytest_cache .ruff_cache .hypothesis node_modules
