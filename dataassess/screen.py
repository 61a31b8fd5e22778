"""Staged screening (successive halving): score every mixture on a small slice of each
evaluation set, keep the best 1/eta, score those on an eta-times larger slice, and so on
until the survivors are scored on the full sets.

Slices are evaluation sets of their own (evalsets.eval_slice: whole windows, with their own
digest), so their scores are cached like any other. Only survivors of the last rung carry full-set
scores; every other mixture is ranked below them by the largest slice it reached.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

M = TypeVar("M", bound=Hashable)


def rung_fractions(eta: int, min_fraction: float) -> list[float]:
    """Slices 1/eta^r, ..., 1/eta, 1: the smallest no smaller than min_fraction."""
    if eta < 2 or not 0 < min_fraction <= 1:
        raise ValueError(f"screening needs eta >= 2 and 0 < min_fraction <= 1, got {eta}, {min_fraction}")
    rungs = math.floor(math.log(1 / min_fraction, eta) + 1e-9)  # no slice below min_fraction
    return [eta**-i for i in range(rungs, 0, -1)] + [1.0]


@dataclass(frozen=True)
class Rung:
    fraction: float
    scored: int  # mixtures scored at this fraction
    kept: int  # of them, passed on to the next rung


def successive_halving(
    candidates: Sequence[M],
    score: Callable[[Sequence[M], float], dict[M, float]],
    eta: int = 5,
    min_fraction: float = 1 / 25,
    keep_min: int = 10,
    keep_max: int | None = None,
) -> tuple[list[tuple[M, float]], list[Rung]]:
    """Candidates ordered best first, each with the largest fraction it was scored on.

    score(mixtures, fraction) returns a loss per mixture (lower is better). Each rung keeps
    max(keep_min, ceil(n / eta)) mixtures, at most keep_max (a budget of full-set scores); with
    keep_min >= len(candidates) this is exhaustive evaluation.
    """
    alive, rungs, placed = list(candidates), [], []
    for fraction in rung_fractions(eta, min_fraction):
        losses = score(alive, fraction)
        order = sorted(alive, key=lambda m: losses[m])
        keep = len(order) if fraction == 1.0 else min(len(order), max(keep_min, math.ceil(len(order) / eta)))
        keep = keep if keep_max is None else min(keep, keep_max)
        rungs.append(Rung(fraction, len(order), keep))
        placed = [(m, fraction) for m in order[keep:]] + placed  # dropped here: below every survivor
        alive = order[:keep]
        if fraction == 1.0:
            placed = [(m, 1.0) for m in alive] + placed
    return placed, rungs


def screening_cost(rungs: Sequence[Rung], candidates: int, tokens: dict[float, float] | None = None) -> float:
    """Evaluation tokens spent, as a fraction of scoring every candidate on the full sets.
    `tokens` maps a rung's fraction to the share of tokens its slices really hold."""
    return sum(r.scored * (tokens or {}).get(r.fraction, r.fraction) for r in rungs) / candidates
