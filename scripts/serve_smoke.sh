#!/usr/bin/env bash
# `make serve` picks up a partition dropped into the corpus root within one interval.
# Serves the intake every $INTERVAL s over a 3-partition corpus, drops a 4th partition in,
# and waits until a ranking that contains it is published. Then `dataassess add-partition`
# adds a 5th, and the script waits for a flow run created by the event trigger (not by the
# schedule) to publish a ranking that contains it. Prints PASS or FAIL per check.
set -uo pipefail
cd "$(dirname "$0")/.."
INTERVAL=${INTERVAL:-30}
WORK=$(mktemp -d)
STORE=$WORK/store
export PREFECT_HOME=$WORK/prefect DATAASSESS_STORE=$STORE
export PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS=5 PREFECT_RUNNER_POLL_FREQUENCY=2
# small, fast settings: a 1-layer seed and 8k-token units
export DATAASSESS_TINY__N_LAYER=1 DATAASSESS_TINY__N_EMBD=64 DATAASSESS_TINY__N_HEAD=2 DATAASSESS_TINY__TOKENS=40000
export DATAASSESS_UNITS__TOKENS=32768 DATAASSESS_CORPUS__MIN_TOKENS=1024 DATAASSESS_RANK__K_MAX=1
DEMO=dataassess/data/demo/corpus
mkdir -p "$WORK/corpus"
for p in scripture-law jargon drama-comedy; do cp -r "$DEMO/$p" "$WORK/corpus/"; done
.venv/bin/dataassess serve "$WORK/corpus" --interval "$INTERVAL" > "$WORK/serve.log" 2>&1 &
SERVE=$!
trap 'kill $SERVE 2>/dev/null; wait $SERVE 2>/dev/null; [ "${KEEP:-}" ] || rm -rf "$WORK"' EXIT  # KEEP=1 keeps logs
has_satire() { grep -q '"satire.u0"' "$STORE/rankings/corpus/latest.json" 2>/dev/null; }
first=$(( $(date +%s) + 600 ))
until [ -s "$STORE/rankings/corpus/latest.json" ]; do
  [ "$(date +%s)" -gt "$first" ] && { echo "FAIL: no first intake within 600 s"; tail -20 "$WORK/serve.log"; exit 1; }
  sleep 2
done
echo "first intake published; dropping satire into the corpus root"
cp -r "$DEMO/satire" "$WORK/corpus/"
dropped=$(date +%s)
# one interval, plus the time one intake takes (seed and the first units are cached)
until has_satire; do
  [ $(( $(date +%s) - dropped )) -gt $(( INTERVAL + 240 )) ] && { echo "FAIL: not picked up"; tail -20 "$WORK/serve.log"; exit 1; }
  sleep 2
done
echo "PASS: satire ranked $(( $(date +%s) - dropped )) s after it was dropped (interval ${INTERVAL} s)"

# the event path: add-partition emits dataassess.partition.created to the server serve started
.venv/bin/dataassess add-partition "$DEMO/scripture-wisdom" --corpus "$WORK/corpus" | tee -a "$WORK/serve.log"
added=$(date +%s)
triggered_run() {
  PREFECT_API_URL=$(cat "$STORE/prefect-api-url") .venv/bin/python - <<'PY'
import asyncio, sys
from prefect.client.orchestration import get_client

async def main():
    async with get_client() as client:
        runs = await client.read_flow_runs()
    done = [r for r in runs if r.created_by and r.created_by.type == "AUTOMATION" and r.state_name == "Completed"]
    print(f"{len(done)} completed run(s) created by the event trigger")
    sys.exit(0 if done else 1)

asyncio.run(main())
PY
}
until grep -q '"scripture-wisdom.u0"' "$STORE/rankings/corpus/latest.json" 2>/dev/null && triggered_run; do
  [ $(( $(date +%s) - added )) -gt 240 ] && { echo "FAIL: no event-triggered intake"; tail -20 "$WORK/serve.log"; exit 1; }
  sleep 3
done
echo "PASS: scripture-wisdom ranked by an event-triggered run $(( $(date +%s) - added )) s after add-partition"
