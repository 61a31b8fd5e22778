#!/usr/bin/env bash
# The fidelity study behind docs/fidelity.md. Each setting has its own store; results
# land in $OUT/<setting>.json. About an hour on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-study}
SHARED=${SHARED:-../shared/corpora}
DA=.venv/bin/dataassess
DEMO=dataassess/data/demo
mkdir -p "$OUT"
python3 scripts/make_study_corpus.py "$SHARED" "$OUT/shared-corpus" > /dev/null
run() {  # name, then fidelity arguments; settings come from DATAASSESS_* in the environment
  local name=$1; shift
  [ -s "$OUT/$name.json" ] && { echo "$name: done"; return; }
  echo "$name: running"
  "$DA" --store "$OUT/store-$name" fidelity --no-mlflow --json "$@" > "$OUT/$name.json.tmp" 2> "$OUT/$name.log"
  mv "$OUT/$name.json.tmp" "$OUT/$name.json"
}
DEMO_ARGS=(--corpus "$DEMO/corpus" --eval-sets "$DEMO/eval")
SWEEP=(--n 15 --k-max 2)  # pairs: compare with the base run's within-k=2 figures
run base "${DEMO_ARGS[@]}" --n 20 --k-max 3
run shared-corpora --corpus "$OUT/shared-corpus" --n 20 --k-max 3
DATAASSESS_TRAIN__LR=1e-4 run lr1e-4 "${DEMO_ARGS[@]}" "${SWEEP[@]}"
DATAASSESS_TRAIN__LR=1e-3 run lr1e-3 "${DEMO_ARGS[@]}" "${SWEEP[@]}"
DATAASSESS_UNITS__TOKENS=32768 run budget32k "${DEMO_ARGS[@]}" "${SWEEP[@]}"
DATAASSESS_TINY__N_LAYER=1 DATAASSESS_TINY__N_EMBD=64 DATAASSESS_TINY__N_HEAD=2 run small-model "${DEMO_ARGS[@]}" "${SWEEP[@]}"
