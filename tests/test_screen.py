import random

import pytest

from dataassess.corpus import Document
from dataassess.evalsets import build_eval_set, eval_slice
from dataassess.screen import rung_fractions, screening_cost, successive_halving
from tests.conftest import demo_docs, run_pipeline


def test_rungs_grow_by_eta_up_to_the_full_sets():
    assert rung_fractions(4, 1 / 16) == [1 / 16, 1 / 4, 1.0]
    assert rung_fractions(2, 0.3) == [0.5, 1.0]
    assert rung_fractions(3, 1.0) == [1.0]
    with pytest.raises(ValueError):
        rung_fractions(1, 0.5)


def test_a_slice_holds_the_fraction_of_tokens_spread_over_the_set(seed):
    tok = seed.load_tokenizer()
    docs = [Document(d["text"], "s") for d in demo_docs("satire", 20)]
    es = build_eval_set("s", docs, tok, ctx=128, stride=64, max_tokens=20_000)
    part = eval_slice(es, 1 / 4)
    longest = max(len(w) - s for w, s in es.windows)
    assert es.tokens / 4 <= part.tokens < es.tokens / 4 + longest
    assert part.tokens == sum(len(w) - s for w, s in part.windows)
    positions = [es.windows.index(w) for w in part.windows]
    assert positions == sorted(positions) and positions[-1] - positions[0] > len(es.windows) / 2  # spread, in order
    assert part.digest != es.digest and eval_slice(es, 1 / 4).digest == part.digest
    assert eval_slice(es, 1.0) is es


def test_successive_halving_keeps_the_best_and_ranks_dropped_ones_below():
    rng = random.Random(0)
    truth = {f"m{i}": float(i) for i in range(64)}
    calls = []

    def score(mixes, fraction):
        calls.append((len(mixes), fraction))
        return {m: truth[m] + rng.gauss(0, 0.5) * (1 - fraction) for m in mixes}  # exact at the full sets

    placed, rungs = successive_halving(list(truth), score, eta=4, min_fraction=1 / 16, keep_min=5)
    assert calls == [(64, 1 / 16), (16, 1 / 4), (5, 1.0)]
    assert [r.kept for r in rungs] == [16, 5, 5]
    assert sorted(m for m, _ in placed) == sorted(truth)
    full = [m for m, f in placed if f == 1.0]
    assert full == sorted(full, key=truth.get) and len(full) == 5
    assert [f for _, f in placed] == sorted((f for _, f in placed), reverse=True)  # fully scored first
    assert screening_cost(rungs, 64) == pytest.approx((64 / 16 + 16 / 4 + 5) / 64)
    exhaustive, _ = successive_halving(list(truth), score, keep_min=64)
    assert [m for m, _ in exhaustive] == sorted(truth, key=truth.get)


def test_screened_ranking_puts_full_scores_on_top(settings, corpus):
    k3 = settings.rank.model_copy(update={"k_max": 3})
    full = run_pipeline(corpus, settings.model_copy(update={"rank": k3}), progress=False)
    exact = {tuple(r.units): r.scores for r in full.ranking}
    screen = k3.model_copy(update={"screen": True, "screen_eta": 2, "screen_min_fraction": 0.25, "screen_keep": 4})
    screened = run_pipeline(corpus, settings.model_copy(update={"rank": screen}), progress=False)
    rows = [r.to_json() for r in screened.ranking]
    assert len(rows) == len(full.ranking) >= 14
    tops = [r for r in rows if "evaluated_fraction" not in r]
    assert len(tops) >= 4 and rows[: len(tops)] == tops
    for row in tops:  # survivors carry the exact full-set scores (reused from the exhaustive run)
        assert row["scores"] == exact[tuple(row["units"])]
    assert {r["evaluated_fraction"] for r in rows[len(tops) :]} <= {0.25, 0.5}
    info = screened.counts["screening"]
    assert [g["fraction"] for g in info["rungs"]] == [0.25, 0.5, 1.0] and info["cost"] < 1


def test_new_mixtures_over_the_full_score_budget_are_screened_and_only_survivors_scored_in_full(
    settings, corpus, tmp_path
):
    import shutil

    from dataassess.rank import macro
    from tests.conftest import prepare_pool

    late = tmp_path / "late"
    shutil.move(corpus / "satire", late)
    first = run_pipeline(corpus, settings)
    before = {tuple(r.units): r.scores for r in first.ranking}
    assert "screening" not in first.counts and all(r.evaluated_fraction == 1 for r in first.ranking)
    shutil.move(late, corpus / "satire")
    budget = settings.rank.model_copy(
        update={"max_full_scores": 2, "screen_keep": 1, "screen_eta": 2, "screen_min_fraction": 0.25}
    )
    s = settings.model_copy(update={"rank": budget})
    second = run_pipeline(corpus, s)
    new = [tuple(r.units) for r in second.ranking if tuple(r.units) not in before]
    info = second.counts["screening"]
    assert info["screened"] == len(new) > 2 and info["budget"] == 2
    assert second.counts["scored"] == len(new)  # only the new mixtures were scored, at any rung
    assert [g["fraction"] for g in info["rungs"]] == [0.25, 0.5, 1.0] and info["rungs"][-1]["scored"] <= 2
    rows = {tuple(r.units): r for r in second.ranking}
    for units, scores in before.items():  # mixtures scored before keep their full-set scores
        assert rows[units].evaluated_fraction == 1 and rows[units].scores == scores
    full_new = [u for u in new if rows[u].evaluated_fraction == 1]
    assert 1 <= len(full_new) <= 2
    first_screened = next(i for i, r in enumerate(second.ranking) if r.evaluated_fraction < 1)
    assert all(r.evaluated_fraction < 1 for r in second.ranking[first_screened:])  # partial scores rank below
    # the survivors of the half-set rung are the new mixtures best on that slice, by the stored slice scores
    with prepare_pool(corpus, s) as pool:
        half = pool.steps.evalsets.sliced(pool.eval_sets, 0.5)
        at_half = [u for u in new if rows[u].evaluated_fraction >= 0.5]
        slice_macro = {
            u: macro({n: x.perplexity for n, x in pool.scores(pool.mixture(u), half).items()}) for u in at_half
        }
    assert max(slice_macro[u] for u in full_new) <= min(
        (slice_macro[u] for u in at_half if u not in full_new), default=float("inf")
    )
