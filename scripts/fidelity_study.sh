#!/usr/bin/env bash
# The fidelity study behind docs/fidelity.md. Each setting has its own store; results
# land in $OUT/<setting>.json. About 45 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-study}
SHARED=${SHARED:-../shared/corpora}
DA=.venv/bin/dataassess
DEMO=dataassess/data/demo
mkdir -p "$OUT"
python3 scripts/make_study_corpus.py "$SHARED" "$OUT/shared-corpus" > /dev/null
run() {  # name, corpus, eval-sets flag..., then env overrides in the environment
  local name=$1; shift
  [ -s "$OUT/$name.json" ] && { echo "$name: done"; return; }
  echo "$name: running"
  "$DA" --store "$OUT/store-$name" fidelity --no-mlflow --json --n 20 --k-max 3 "$@" > "$OUT/$name.json.tmp" 2> "$OUT/$name.log"
  mv "$OUT/$name.json.tmp" "$OUT/$name.json"
}
run base --corpus "$DEMO/corpus" --eval-sets "$DEMO/eval"
DATAASSESS_TRAIN__LR=1e-4 run lr1e-4 --corpus "$DEMO/corpus" --eval-sets "$DEMO/eval"
DATAASSESS_TRAIN__LR=1e-3 run lr1e-3 --corpus "$DEMO/corpus" --eval-sets "$DEMO/eval"
DATAASSESS_UNITS__TOKENS=32768 run budget32k --corpus "$DEMO/corpus" --eval-sets "$DEMO/eval"
DATAASSESS_TINY__N_LAYER=1 DATAASSESS_TINY__N_EMBD=64 DATAASSESS_TINY__N_HEAD=2 run small-model --corpus "$DEMO/corpus" --eval-sets "$DEMO/eval"
run shared-corpora --corpus "$OUT/shared-corpus"
