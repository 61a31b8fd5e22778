"""Subsets past exhaustive: a surrogate-guided search over the candidate mixtures.

Every single unit and a sample of the larger mixtures (stratified by size) are scored first. Then, each round,
the weight search's surrogate family (optimize.fit_surrogate: a mixture as the uniform weights of its units,
log score as the target) predicts every unscored mixture, and the most promising ones are scored in full. The
search stops after `rounds`, or earlier once a round leaves the top `top` unchanged.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import numpy as np

M = TypeVar("M", bound=Hashable)


def as_weights(mixture: Sequence[str], units: Sequence[str]) -> np.ndarray:
    """A mixture as the weights its uniform merge gives each unit: 1/k on its members."""
    index = {u: i for i, u in enumerate(units)}
    w = np.zeros(len(units))
    for u in mixture:
        w[index[u]] = 1.0 / len(mixture)
    return w


def first_design(candidates: Sequence[M], size: int, rng: random.Random) -> list[M]:
    """Every single unit, then larger mixtures drawn round-robin over sizes until `size`."""
    singles = [m for m in candidates if len(m) == 1]
    by_k: dict[int, list[M]] = {}
    for m in candidates:
        if len(m) > 1:
            by_k.setdefault(len(m), []).append(m)
    for group in by_k.values():
        rng.shuffle(group)
    design = list(singles)
    while len(design) < size and any(by_k.values()):
        for k in sorted(by_k):
            if by_k[k] and len(design) < size:
                design.append(by_k[k].pop())
    return design


def guided_search(
    candidates: Sequence[M],
    units: Sequence[str],
    score: Callable[[Sequence[M]], dict[M, float]],
    initial: int,
    per_round: int,
    rounds: int,
    top: int = 5,
    seed: int = 0,
) -> tuple[dict[M, float], list[dict]]:
    """The mixtures scored (a loss each, lower is better, from `score`) and one record per round."""
    from sklearn.exceptions import DataConversionWarning

    from .optimize import fit_surrogate

    scored = dict(score(first_design(candidates, initial, random.Random(seed))))
    history = [{"round": 0, "scored": len(scored)}]
    for r in range(1, rounds + 1):
        unscored = [m for m in candidates if m not in scored]
        if not unscored:
            break
        names = list(scored)
        x = np.array([as_weights(m, units) for m in names])
        positive = all(v > 0 for v in scored.values())
        y = np.array([[math.log(scored[m]) if positive else scored[m]] for m in names])
        with warnings.catch_warnings():  # one target column: tree models ask for a 1-d one
            warnings.simplefilter("ignore", DataConversionWarning)
            surrogate = fit_surrogate(x, y, np.ones(1))
        predicted = surrogate.objective(np.array([as_weights(m, units) for m in unscored]))
        picks = [unscored[i] for i in np.argsort(predicted, kind="stable")[:per_round]]
        before = sorted(scored, key=lambda m: (scored[m], m))[:top]
        scored.update(score(picks))
        after = sorted(scored, key=lambda m: (scored[m], m))[:top]
        history.append(
            {
                "round": r,
                "scored": len(picks),
                "surrogate": surrogate.name,
                "cv_spearman": surrogate.cv_spearman[surrogate.name],
                "top_changed": before != after,
            }
        )
        if before == after:
            break
    return scored, history
