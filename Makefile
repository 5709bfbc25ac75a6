# Quick start: `make demo` (set up + run the demo) and `make test` (set up + run the tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint readme bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch 2.13.0 first: it is the CPU wheel; an unpinned torch would pull a CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[all,test,milvus-server]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/lookalike demo

# the suite, then the real Milvus standalone (it listens on all interfaces: only inside a
# private network namespace, which needs root; elsewhere that module skips with its reason)
test: setup
	bash scripts/test-deps.sh
	$(BIN)/python -m pytest -q
	if [ "$$(id -u)" = 0 ]; then scripts/run-in-netns.sh $(BIN)/python -m pytest -q -m milvus_server tests/test_milvus_server.py; \
	else $(BIN)/python -m pytest -q -m milvus_server tests/test_milvus_server.py; fi

lint: setup
	$(BIN)/ruff check lookalike tests benchmarks scripts
	$(BIN)/mypy lookalike

# README.md's example outputs, made again from the bundled sample (tests/test_readme.py checks them)
readme: setup
	$(BIN)/python scripts/readme_examples.py

clean:
	rm -rf $(VENV) build *.egg-info
