"""Mixture keys carry every unit model's weights digest and the merge method: a rebuilt model re-scores
exactly the mixtures that contain it, uniform and weighted alike."""

import itertools

import torch
from safetensors.torch import load_file

from dataassess.store import Store, read_json, write_json
from dataassess.weights import save_state
from tests.conftest import run_pipeline


def weighted_pairs(pool) -> dict[tuple[str, str], object]:
    return {(a, b): pool.mixture([a, b], {a: 0.7, b: 0.3}) for a, b in itertools.combinations(sorted(pool.models), 2)}


def test_a_rebuilt_unit_model_re_scores_every_mixture_holding_it_and_no_other(settings, corpus):
    first = run_pipeline(corpus, settings)
    pool, store = first.pool, Store(settings.store)
    before = weighted_pairs(pool)
    for mixture in before.values():  # the weighted merges scored too
        pool.scores(mixture)
    pool.close()

    # the unit model rebuilt with other bytes (as a retraining on another machine would give)
    unit = sorted(first.models)[0]
    model = first.models[unit]
    state = {k: v + 1e-3 for k, v in load_file(str(store.weights(model.key))).items()}
    digest = save_state(state, store.weights(model.key))
    write_json(store.meta(model.key), {**read_json(store.meta(model.key)), "weights_digest": digest})

    second = run_pipeline(corpus, settings)
    holding = [r for r in second.ranking if unit in r.units]
    assert second.trained == [], "the rebuilt model is reused, not retrained"
    assert second.counts["scored"] == len(holding) > 0, "exactly the uniform mixtures holding the unit"
    changed = {tuple(r.units): r.scores for r in second.ranking}
    for r in first.ranking:
        if unit not in r.units:
            assert changed[tuple(r.units)] == r.scores

    after = weighted_pairs(second.pool)
    for pair, mixture in after.items():
        cached = second.pool.steps.cached(mixture.key, second.pool.eval_sets)
        if unit in pair:
            assert mixture.key != before[pair].key and cached == {}, f"{pair} must be scored again"
        else:
            assert mixture.key == before[pair].key and len(cached) == len(second.pool.eval_sets), pair


def test_the_merge_method_and_its_parameters_are_in_the_key(settings, corpus):
    from dataassess.merge import merge_spec

    result = run_pipeline(corpus, settings.model_copy(update={"rank": settings.rank.model_copy(update={"k_max": 1})}))
    pair = sorted(result.models)[:2]
    keys = {
        result.pool.mixture(pair, merge=merge_spec(name, params)).key
        for name, params in [("linear", None), ("task_arithmetic", None), ("task_arithmetic", {"scale": 0.5})]
    }
    assert len(keys) == 3
    assert result.pool.mixture(pair).key == result.pool.mixture(list(reversed(pair))).key, "order-free"
    ta = result.pool.mixture(pair, merge=merge_spec("task_arithmetic"))
    scores = result.pool.scores(ta)
    linear = result.pool.scores(result.pool.mixture(pair))
    assert all(torch.isfinite(torch.tensor(s.perplexity)) for s in scores.values())
    assert any(scores[n].perplexity != linear[n].perplexity for n in scores), "another merge, other weights"
