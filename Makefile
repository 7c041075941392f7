# `make demo` and `make test` each bootstrap .venv from nothing, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch lies on disk; install it first so the project's range does not pull a CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The served-backend tests need a real server: llama-cpp-python, compiled here (a few minutes, once);
# the Ray tests need Ray (the optional extra `ray`).
$(TEST_STAMP): $(STAMP)
	$(PY) -c "import llama_cpp.server, ray" 2>/dev/null || CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip install --quiet -e ".[test,served-test,ray]"
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(VENV)/bin/ppllm demo

test: $(TEST_STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check ppllm tests benchmarks models

clean:
	rm -rf $(VENV) build *.egg-info
