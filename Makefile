# The two set-up commands: `make run` (the demo) and `make test` (the whole suite).
# Both work on a fresh clone with only Python, pip and apt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Debian packages the test suite needs: a real Prometheus server, headless Chromium for the
# dashboard, and the C/C++ compilers that build Ollama's no-device SYCL stub and llama.cpp's
# llama-server (once, then cached). Each name is both the command looked for and the
# package installed when it is missing.
APT_PACKAGES := prometheus chromium gcc g++
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-fast lint bench clean apt-deps

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing servescope into $(VENV) ..."
	@$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

# ENGINE=sim: the simulated engine (servescope sim-server), instant and nothing to install
ENGINE ?= vllm
run: $(STAMP)
	$(BIN)/servescope demo --engine $(ENGINE)

apt-deps:
	@missing=""; for p in $(APT_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

test: $(STAMP) apt-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The quick loop while editing: no engines, no browser, no timing runs (the markers are in
# pyproject.toml), so nothing to install with apt. `make test` and CI still run everything.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not engine and not browser and not timing and not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
