# make test: create .venv if missing, install idforge with pinned test deps, run the whole suite.
# make lint: same install, then ruff (lint and format) and mypy on engine/, comfy/, methods/, workflow/ and
# server/ (config: pyproject.toml).
# make demo: same install, then build the tiny kit and run the demo jobs into outputs/.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.idforge-installed

.PHONY: install test demo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	# Real servers the tests start themselves: PostgreSQL 15 and Debian's headless Chromium (never a downloaded browser).
	scripts/system-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, pinned: 2.13.0 is a local CPU wheel here; unpinned it would pull CUDA.
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[test]'
	# Test-only reference implementation for face-analysis parity (its deps would clobber opencv-headless).
	$(PIP) install --quiet --no-deps insightface==2.1
	# Test-only reference: tencent's IP-Adapter code (Resampler, MLPProjModel); its deps pin an old diffusers.
	$(PIP) install --quiet --no-deps ip-adapter==0.1.0
	touch $(STAMP)

# PYTEST_ARGS: extra pytest options (.ci/run adds the skip summary and the 25 slowest tests).
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/idforge demo --out outputs

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy src/idforge/engine src/idforge/comfy src/idforge/methods src/idforge/workflow src/idforge/server

clean:
	rm -rf $(VENV) outputs .pytest_cache .mypy_cache
