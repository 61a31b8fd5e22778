#!/usr/bin/env bash
# The fidelity study behind docs/fidelity.md: both budgets on the demo corpus and on the shared
# corpora (10 partitions), and the fixed budget with a larger seed (4 layers x 256). Each
# setting has its own store (its budgets share the unit models); results land in $OUT/<name>.json.
# Hours on 2 CPU cores (each setting prints its wall time); a finished setting is skipped when rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-study}
SHARED=${SHARED:-../shared/corpora}
DA=.venv/bin/dataassess
DEMO=dataassess/data/demo
SAMPLE=(--n "${N:-24}" --k-max 3 --replicates "${REPLICATES:-8}")
mkdir -p "$OUT"
[ -d "$OUT/shared-corpus" ] || python3 scripts/make_study_corpus.py "$SHARED" "$OUT/shared-corpus" > /dev/null
run() {  # name, store, then fidelity arguments; settings come from DATAASSESS_* in the environment
  local name=$1 store=$2; shift 2
  [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]] && return  # ONLY="shared-fixed shared-union": just those
  [ -s "$OUT/$name.json" ] && { echo "$name: done"; return; }
  echo "$name: running"
  local start=$SECONDS
  "$DA" --store "$OUT/store-$store" fidelity --no-mlflow --json "${SAMPLE[@]}" "$@" > "$OUT/$name.json.tmp" 2> "$OUT/$name.log"
  mv "$OUT/$name.json.tmp" "$OUT/$name.json"
  echo "$name: $((SECONDS - start)) s"
}
DEMO_ARGS=("$DEMO/corpus" --eval-sets "$DEMO/eval")
run demo-fixed demo "${DEMO_ARGS[@]}" --budget fixed
run demo-union demo "${DEMO_ARGS[@]}" --budget union
run shared-fixed shared "$OUT/shared-corpus" --budget fixed
run shared-union shared "$OUT/shared-corpus" --budget union
# the larger seed trains about 2.5x slower here: a smaller sample (the flags after SAMPLE win)
DATAASSESS_TINY__N_LAYER=4 DATAASSESS_TINY__N_EMBD=256 DATAASSESS_TINY__N_HEAD=4 \
  run larger-seed-fixed larger "${DEMO_ARGS[@]}" --budget fixed --n "${N_LARGER:-12}" --replicates "${REPLICATES_LARGER:-4}"
