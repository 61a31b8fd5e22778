"""Candidate mixtures and their ranking."""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Iterable, Sequence

from .errors import UserError
from .types import RankedMixture


def enumerate_mixtures(
    units: Sequence[str], k_max: int, explicit: Iterable[Sequence[str]] | None = None
) -> list[tuple[str, ...]]:
    """All subsets of 1..k_max units (sorted), or the explicit list, validated."""
    known = set(units)
    if explicit is not None:
        mixtures = []
        for mix in explicit:
            missing = [u for u in mix if u not in known]
            if missing or not mix:
                raise UserError(f"mixture {list(mix)} names unknown units {missing}; known: {sorted(known)}")
            mixtures.append(tuple(sorted(set(mix))))
        return list(dict.fromkeys(mixtures))
    if k_max < 1:
        raise UserError("rank.k_max must be at least 1")
    ordered = sorted(known)
    return [m for k in range(1, min(k_max, len(ordered)) + 1) for m in itertools.combinations(ordered, k)]


def macro(scores: dict[str, float]) -> float:
    """Geometric mean of perplexities over evaluation sets."""
    return math.exp(sum(math.log(v) for v in scores.values()) / len(scores))


def rank(rows: list[RankedMixture], by: str = "macro", within_size: bool = False) -> list[RankedMixture]:
    """Rows sorted best (lowest perplexity) first, with macro, rank and rank_in_size set.
    within_size: sizes are never compared: rows are grouped by k, and rank is the rank within the size."""
    if rows and by != "macro" and by not in rows[0].scores:
        raise UserError(f"cannot rank by '{by}': evaluation sets are {sorted(rows[0].scores)} or 'macro'")
    for row in rows:
        row.macro = macro(row.scores)
    key = (lambda r: r.macro) if by == "macro" else (lambda r: r.scores[by])
    # rows screened out on a slice of the evaluation sets rank below every fully scored row
    ranked = sorted(rows, key=lambda r: (r.k if within_size else 0, -r.evaluated_fraction, key(r), r.units))
    seen_per_size: dict[int, int] = {}
    for i, row in enumerate(ranked, 1):
        seen_per_size[row.k] = seen_per_size.get(row.k, 0) + 1
        row.rank_in_size = seen_per_size[row.k]
        row.rank = row.rank_in_size if within_size else i
    return ranked


def rank_changes(ranking: list[RankedMixture], previous: list[dict] | None) -> dict:
    """Set each row's rank_change and say what changed that matters.

    rank_change compares the order of the mixtures ranked both times: places moved up among
    them (0: none; None: new). A mixture pushed down only by newcomers has not moved.
    """
    if previous is None:
        return {
            "new": [],
            "moved": [],
            "dropped": [],
            "best": ranking[0].units if ranking else None,
            "previous_best": None,
            "new_best": False,
        }
    before = {tuple(r["units"]): i for i, r in enumerate(previous)}
    now = {tuple(r.units) for r in ranking}
    common = [row for row in ranking if tuple(row.units) in before]
    old_place = {tuple(r.units): i for i, r in enumerate(sorted(common, key=lambda r: before[tuple(r.units)]))}
    for row in ranking:
        row.rank_change = None
    for place, row in enumerate(common):
        row.rank_change = old_place[tuple(row.units)] - place
    previous_best = previous[0]["units"] if previous else None
    return {
        "new": [r.units for r in ranking if r.rank_change is None],
        "moved": [r.units for r in common if r.rank_change],
        "dropped": [
            r["units"] for r in previous if tuple(r["units"]) not in now
        ],  # a unit gone: its partition removed or changed
        "best": ranking[0].units if ranking else None,
        "previous_best": previous_best,
        "new_best": bool(ranking) and previous_best is not None and ranking[0].units != previous_best,
    }


def fidelity_summary(report: dict | None, budget: str, seed_digest: str, merge: dict) -> dict:
    """How far to trust a ranking at `budget`, as every ranking shows it: from the pool's latest fidelity report at
    that budget, when it measured this seed and merge method."""
    run = f"run `dataassess fidelity CORPUS --budget {budget}`"
    if not report:
        return {"measured": False, "how": f"not measured for this pool at the {budget} budget: {run}"}
    if report.get("settings", {}).get("seed_digest") != seed_digest or report.get("merge") != merge:
        return {"measured": False, "how": f"not measured for this seed and merge method: {run}"}
    m = report["macro"]
    return {
        "measured": True,
        "budget": report["budget"],
        "when": report.get("measured", ""),
        "n_mixtures": m["n_mixtures"],
        "spearman": m["spearman"],
        "decision_accuracy": m["decision_accuracy"],
        "resolvable_decision_accuracy": m["resolvable_decision_accuracy"],
        "n_resolvable_pairs": m["n_resolvable_pairs"],
        "ceiling": m["ceiling"].get("replicate", {}).get("resolvable_decision_accuracy"),
    }


def fidelity_line(f: dict) -> str:
    """'agrees with real training on X% of resolvable decisions (N pairs; ceiling Y%)', or how to measure it."""
    if not f.get("measured"):
        return "fidelity: " + f.get("how", "not measured: run `dataassess fidelity CORPUS`")
    if "resolvable_decision_accuracy" not in f:  # a snapshot of an older protocol's study
        return "fidelity: measured under an older protocol: rerun `dataassess fidelity CORPUS`"
    pct = lambda v: "n/a" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    return (
        f"fidelity ({f['budget']} budget, {f['n_mixtures']} mixtures trained, {f['when'][:10]}): agrees with real "
        f"training on {pct(f['resolvable_decision_accuracy'])} of resolvable decisions ({f['n_resolvable_pairs']} "
        f"pairs; ceiling {pct(f['ceiling'])})"
    )


def _abbreviations(sets: list[str], width: int) -> tuple[list[str], str]:
    """Column heads for evaluation sets: the names when they fit `width`, else s1, s2, ... and a legend."""
    if all(len(s) <= width for s in sets):
        return sets, ""
    heads = [f"s{i}" for i in range(1, len(sets) + 1)]
    return heads, "sets: " + ", ".join(f"{h} = {s}" for h, s in zip(heads, sets))


def format_table(
    ranking: Sequence[RankedMixture],
    top: int | None = None,
    by: str = "macro",
    seed_scores: dict[str, float] | None = None,
    columns: int = 120,
) -> str:
    """The ranking as a table that fits `columns`: rank, k, rank within size, change, mixture, perplexities, macro.
    Too many evaluation sets for the width: only the ranked-by set and macro are shown."""
    if not ranking:
        return "(empty ranking)"
    rows = ranking[:top] if top else ranking
    sets = sorted(ranking[0].scores)
    cell = 9
    fixed = 4 + 3 + 5 + 7 + 2 + cell + 2  # rank, k, in-size, change, gaps, macro
    reduced = fixed + 20 + len(sets) * (cell + 1) > columns
    if reduced:
        sets = [by] if by != "macro" else []
    heads, legend = _abbreviations(sets, cell)
    width = max(8, min(max(len(" + ".join(r.units)) for r in rows), columns - fixed - len(sets) * (cell + 1)))

    def name(units: list[str]) -> str:
        text = " + ".join(units)
        return text if len(text) <= width else text[: width - 1] + "~"

    head = (
        f"{'rank':>4} {'k':>2} {'in k':>4} {'change':>6}  {'mixture':<{width}}"
        + "".join(f" {h[:cell]:>{cell}}" for h in heads)
        + f"  {'macro':>{cell}}"
    )
    lines = [
        f"perplexity (lower is better), ranked by {by}; change: places moved among mixtures ranked last time",
        head,
        "-" * len(head),
    ]
    for r in rows:
        change = "new" if r.rank_change is None else ("=" if r.rank_change == 0 else f"{r.rank_change:+d}")
        cells = "".join(f" {r.scores[s]:>{cell}.2f}" for s in sets)
        screened = "  (screened out)" if r.evaluated_fraction < 1 else ""
        lines.append(
            f"{r.rank:>4} {r.k:>2} {r.rank_in_size:>4} {change:>6}  {name(r.units):<{width}}{cells}  "
            f"{r.macro:>{cell}.2f}{screened}"
        )
    if seed_scores:
        cells = "".join(f" {seed_scores[s]:>{cell}.2f}" for s in sets)
        lines.append(
            f"{'':>4} {0:>2} {'':>4} {'':>6}  {'(seed, reference)':<{width}}{cells}  {macro(seed_scores):>{cell}.2f}"
        )
    if top and len(ranking) > top:
        lines.append(f"... {len(ranking) - top} more (dataassess ranking --top {len(ranking)}, or --json)")
    if legend:
        lines.append(textwrap.fill(legend, columns, subsequent_indent="      ", break_on_hyphens=False))
    if reduced:
        lines.append("per-set perplexities: dataassess ranking --json")
    return "\n".join(lines)
