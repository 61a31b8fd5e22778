"""The surrogate-guided subset search: fewer mixtures scored, the same top of the ranking."""

import itertools

import numpy as np
import pytest

from dataassess.subsets import as_weights, first_design, guided_search
from tests.conftest import run_pipeline


def test_the_search_finds_the_best_subsets_of_a_smooth_loss_scoring_a_fraction():
    units = [f"u{i:02d}" for i in range(12)]
    rng = np.random.default_rng(0)
    effect = rng.normal(0, 1, len(units))
    candidates = [m for k in (1, 2, 3) for m in itertools.combinations(units, k)]

    def loss(m):  # log perplexity of a uniform merge: its units' effects averaged, plus a pairwise interaction
        w = as_weights(m, units)
        return float(np.exp(5 + 0.1 * (w @ effect) + 0.05 * (w @ effect) ** 2))

    calls = []

    def score(ms):
        calls.append(len(ms))
        return {m: loss(m) for m in ms}

    scored, history = guided_search(candidates, units, score, initial=40, per_round=10, rounds=6)
    best = sorted(candidates, key=loss)[:5]
    assert sorted(scored, key=scored.get)[:5] == best
    assert sum(calls) == len(scored) <= len(candidates) / 4 and history[0]["scored"] == 40
    design = first_design(candidates, 40, __import__("random").Random(0))
    assert all((u,) in design for u in units) and len(design) == len(set(design)) == 40


def test_guided_ranking_of_a_real_pool_has_the_exhaustive_top_5_in_order(settings, corpus):
    k3 = settings.rank.model_copy(update={"k_max": 3})
    exhaustive = run_pipeline(corpus, settings.model_copy(update={"rank": k3}))
    guided_cfg = k3.model_copy(update={"search": "guided", "guided_initial": 12, "guided_round": 3, "guided_rounds": 4})
    guided = run_pipeline(corpus, settings.model_copy(update={"rank": guided_cfg}))
    info = guided.counts["guided_search"]
    assert info["candidates"] == len(exhaustive.ranking) and info["scored"] == len(guided.ranking)
    assert info["scored"] <= len(exhaustive.ranking) / 2, info
    top = [r.units for r in exhaustive.ranking[:5]]
    assert [r.units for r in guided.ranking[:5]] == top
    for r in guided.ranking[:5]:
        assert r.macro == pytest.approx(next(e.macro for e in exhaustive.ranking if e.units == r.units))
