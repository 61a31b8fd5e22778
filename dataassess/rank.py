"""Candidate mixtures and their ranking."""
from __future__ import annotations

import itertools
import math
from typing import Iterable, Sequence

from .types import RankedMixture


def enumerate_mixtures(units: Sequence[str], k_max: int, explicit: Iterable[Sequence[str]] | None = None) -> list[tuple[str, ...]]:
    """All subsets of 1..k_max units (sorted), or the explicit list, validated."""
    known = set(units)
    if explicit is not None:
        mixtures = []
        for mix in explicit:
            missing = [u for u in mix if u not in known]
            if missing or not mix:
                raise ValueError(f"mixture {list(mix)} names unknown units {missing}; known: {sorted(known)}")
            mixtures.append(tuple(sorted(set(mix))))
        return list(dict.fromkeys(mixtures))
    if k_max < 1:
        raise ValueError("k_max must be at least 1")
    ordered = sorted(known)
    return [m for k in range(1, min(k_max, len(ordered)) + 1) for m in itertools.combinations(ordered, k)]


def macro(scores: dict[str, float]) -> float:
    """Geometric mean of perplexities over evaluation sets."""
    return math.exp(sum(math.log(v) for v in scores.values()) / len(scores))


def rank(rows: list[RankedMixture], by: str = "macro", within_size: bool = False) -> list[RankedMixture]:
    """Rows sorted best (lowest perplexity) first, with macro, rank and rank_in_size set.
    within_size: sizes are never compared: rows are grouped by k, and rank is the rank within the size."""
    if rows and by != "macro" and by not in rows[0].scores:
        raise ValueError(f"cannot rank by '{by}': evaluation sets are {sorted(rows[0].scores)} or 'macro'")
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


def format_table(ranking: Sequence[RankedMixture], top: int | None = None, by: str = "macro") -> str:
    if not ranking:
        return "(empty ranking)"
    sets = sorted(ranking[0].scores)
    width = max(len(" + ".join(r.units)) for r in ranking[:top])
    head = f"{'rank':>4}  {'mixture':<{width}}  " + "  ".join(f"{s[:12]:>12}" for s in sets) + f"  {'macro':>9}"
    lines = [f"perplexity (lower is better), ranked by {by}", head, "-" * len(head)]
    for r in ranking[:top]:
        cells = "  ".join(f"{r.scores[s]:>12.2f}" for s in sets)
        screened = f"  (screened out on {r.evaluated_fraction:g} of each set)" if r.evaluated_fraction < 1 else ""
        lines.append(f"{r.rank:>4}  {' + '.join(r.units):<{width}}  {cells}  {r.macro:>9.2f}{screened}")
    if top and len(ranking) > top:
        lines.append(f"... {len(ranking) - top} more (dataassess ranking --json for all)")
    return "\n".join(lines)
