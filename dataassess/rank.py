"""Candidate mixtures and their ranking."""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from .errors import UserError
from .types import RankedMixture

T = TypeVar("T")


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
    """Geometric mean of perplexities over evaluation sets (a task set's is 2 ** gold_bpb)."""
    return math.exp(sum(math.log(v) for v in scores.values()) / len(scores))


AGGREGATES = ("macro", "z_macro")
MACRO_CELL = 9  # the table's macro column


def check_by(by: str, sets: Sequence[str], families: Mapping[str, Sequence[str]]) -> None:
    """`by` names an evaluation set, a task family, 'macro' or 'z_macro'."""
    if by in AGGREGATES or by in sets or by in families:
        return
    fams = f", a task family ({', '.join(sorted(families))})" if families else ""
    raise UserError(
        f"cannot rank by '{by}': choose an evaluation set ({', '.join(sorted(sets))}){fams}, 'macro' or 'z_macro'"
    )


def family_bpb(scores: Mapping[str, float], sets: Sequence[str]) -> float:
    """A family's score: its sets' gold_bpb (log2 of their scores), averaged. Lower is better."""
    return sum(math.log2(scores[s]) for s in sets) / len(sets)


def z_macro(rows: Sequence[Mapping[str, float]], basis: Sequence[Mapping[str, float]] | None = None) -> list[float]:
    """Per row, each set's log score (log perplexity; gold_bpb * ln 2 for a task set) z-scored across `basis`
    (default the rows; population standard deviation; 0 where every row is equal), averaged over sets."""
    basis = rows if basis is None else basis
    sets = sorted(rows[0]) if rows else []
    stats = {}
    for s in sets:
        logs = [math.log(b[s]) for b in basis]
        mean = sum(logs) / len(logs)
        stats[s] = mean, math.sqrt(sum((x - mean) ** 2 for x in logs) / len(logs))
    return [
        sum((math.log(r[s]) - stats[s][0]) / stats[s][1] if stats[s][1] > 0 else 0.0 for s in sets) / len(sets)
        for r in rows
    ]


def by_value(scores: Mapping[T, Mapping[str, float]], by: str, families: Mapping[str, Sequence[str]]) -> dict[T, float]:
    """Each mixture's lower-is-better value for `by`, from its per-set scores (z_macro: across these mixtures)."""
    keys = list(scores)
    if by == "z_macro":
        return dict(zip(keys, z_macro([scores[k] for k in keys])))
    if by == "macro":
        return {k: macro(dict(scores[k])) for k in keys}
    if by in families:
        return {k: family_bpb(scores[k], families[by]) for k in keys}
    return {k: scores[k][by] for k in keys}


def family_metrics(row: RankedMixture, sets: Sequence[str]) -> dict[str, float]:
    """A family's metrics on one row: gold_bpb and the choice metrics, each averaged over the sets that have it."""
    out = {"gold_bpb": family_bpb(row.scores, sets)}
    tasks = row.tasks or {}
    for metric in ("choice_accuracy", "choice_accuracy_raw", "gold_prob_norm"):
        values = [tasks[s][metric] for s in sets if metric in tasks.get(s, {})]
        if values:
            out[metric] = sum(values) / len(values)
    return out


def rank(
    rows: list[RankedMixture],
    by: str = "macro",
    within_size: bool = False,
    families: Mapping[str, Sequence[str]] | None = None,
) -> list[RankedMixture]:
    """Rows sorted best first by `by` (lower perplexity, gold_bpb or z-score), with macro, z_macro, family metrics,
    rank and rank_in_size set. within_size: sizes are never compared: rows are grouped by k, and rank is the rank
    within the size."""
    families = families or {}
    if rows:
        check_by(by, sorted(rows[0].scores), families)
    full = [r.scores for r in rows if r.evaluated_fraction == 1.0] or [r.scores for r in rows]
    for row, z in zip(rows, z_macro([r.scores for r in rows], full)):
        row.macro, row.z_macro = macro(row.scores), z
        row.families = {f: family_metrics(row, sets) for f, sets in sorted(families.items())} or None
    if by == "macro":
        key = lambda r: r.macro  # noqa: E731
    elif by == "z_macro":
        key = lambda r: r.z_macro  # noqa: E731
    elif by in families:
        key = lambda r: r.families[by]["gold_bpb"]  # noqa: E731
    else:
        key = lambda r: r.scores[by]  # noqa: E731
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
    seed_tasks: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """The ranking as a table that fits `columns`: rank, k, rank within size, change, mixture, a column per
    evaluation set (perplexity; a task set's gold_bpb and, for multiple choice, its choice accuracy), the ranked-by
    family or z_macro, and macro. Too many columns for the width: only the ranked-by set and macro are shown."""
    if not ranking:
        return "(empty ranking)"
    rows = ranking[:top] if top else ranking
    tasks = {s: m for s, m in (ranking[0].tasks or {}).items()}
    sets = sorted(ranking[0].scores)

    def set_columns(names: list[str], narrow: bool = False) -> list[tuple[str, str, str]]:  # set, metric, format
        cols = []
        for s in names:
            if s not in tasks:
                cols.append((s, "perplexity", "{:.4g}" if narrow else "{:.2f}"))
                continue
            cols.append((s, "gold_bpb", "{:.3f}"))
            if "choice_accuracy" in tasks[s]:
                cols.append((s, "choice_accuracy", "{:.3f}"))
        return cols

    extra = [by] if by == "z_macro" or by in (ranking[0].families or {}) else []
    # the widest layout that fits: every set; every set in narrower cells; the task sets (and the ranked-by set);
    # the ranked-by set alone
    task_sets = [s for s in sets if s in tasks or s == by]
    layouts = [(set_columns(sets), 9), (set_columns(sets, narrow=True), 6), (set_columns(task_sets), 9)]
    layouts.append((set_columns([by] if by in sets else []), 9))

    def fixed_width(cell: int) -> int:  # rank, k, in-size, change, gaps, macro and the extra column
        return 4 + 3 + 5 + 7 + 2 + MACRO_CELL + 2 + len(extra) * (MACRO_CELL + 1)

    cols, cell = next(((c, w) for c, w in layouts if fixed_width(w) + 22 + len(c) * (w + 1) <= columns), layouts[-1])
    reduced = len(cols) < len(layouts[0][0])
    fixed = fixed_width(cell)
    names = list(dict.fromkeys(s for s, _, _ in cols))
    short, legend = _abbreviations(names, cell)
    short = dict(zip(names, short))
    heads = [short[s] if metric != "choice_accuracy" else "acc" for s, metric, _ in cols]
    width = max(8, min(max(len(" + ".join(r.units)) for r in rows), columns - fixed - len(cols) * (cell + 1)))

    def name(units: list[str]) -> str:
        text = " + ".join(units)
        return text if len(text) <= width else text[: width - 1] + "~"

    def value(scores: Mapping[str, float], task: Mapping[str, Mapping[str, float]], s: str, metric: str, fmt) -> str:
        if metric == "perplexity":
            return fmt.format(scores[s])
        if metric == "gold_bpb":
            return fmt.format(math.log2(scores[s]))
        return fmt.format(task[s][metric]) if metric in task.get(s, {}) else ""

    def extra_cell(r: RankedMixture) -> str:
        if not extra:
            return ""
        v = r.z_macro if by == "z_macro" else (r.families or {})[by]["gold_bpb"]
        return f" {v:>{MACRO_CELL}.3f}"

    head = (
        f"{'rank':>4} {'k':>2} {'in k':>4} {'change':>6}  {'mixture':<{width}}"
        + "".join(f" {h[:cell]:>{cell}}" for h in heads)
        + "".join(f" {h[:MACRO_CELL]:>{MACRO_CELL}}" for h in extra)
        + f"  {'macro':>{MACRO_CELL}}"
    )
    what = "perplexity" + (" (task sets: gold_bpb, bits per byte of the gold answer)" if tasks else "")
    what += ", lower is better"
    what += "; acc: choice accuracy, higher is better" if any(m == "choice_accuracy" for _, m, _ in cols) else ""
    what += f"; {by}: each set's log score z-scored across mixtures, averaged" if by == "z_macro" else ""
    what += f"; {by}: its task sets' gold_bpb, averaged" if extra and by != "z_macro" else ""
    lines = [
        *textwrap.wrap(what, columns),
        f"ranked by {by}; change: places moved among mixtures ranked last time",
        head,
        "-" * len(head),
    ]
    for r in rows:
        change = "new" if r.rank_change is None else ("=" if r.rank_change == 0 else f"{r.rank_change:+d}")
        cells = "".join(f" {value(r.scores, r.tasks or {}, s, m, fmt):>{cell}}" for s, m, fmt in cols)
        screened = f"  (screened out on {r.evaluated_fraction:.2g} of the sets)" if r.evaluated_fraction < 1 else ""
        lines.append(
            f"{r.rank:>4} {r.k:>2} {r.rank_in_size:>4} {change:>6}  {name(r.units):<{width}}{cells}{extra_cell(r)}  "
            f"{r.macro:>{MACRO_CELL}.2f}{screened}"
        )
    if seed_scores:
        cells = "".join(f" {value(seed_scores, seed_tasks or {}, s, m, fmt):>{cell}}" for s, m, fmt in cols)
        pad = " " * (len(extra) * (MACRO_CELL + 1))
        lines.append(
            f"{'':>4} {0:>2} {'':>4} {'':>6}  {'(seed, reference)':<{width}}{cells}{pad}  "
            f"{macro(seed_scores):>{MACRO_CELL}.2f}"
        )
    if top and len(ranking) > top:
        lines.append(f"... {len(ranking) - top} more (dataassess ranking --top {len(ranking)}, or --json)")
    if legend:
        lines.append(textwrap.fill(legend, columns, subsequent_indent="      ", break_on_hyphens=False))
    if reduced:
        lines.append("per-set perplexities: dataassess ranking --json")
    return "\n".join(lines)
