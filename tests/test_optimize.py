"""Mixture weights: the search space's bounds, weighted ground truths, the warm-started search, the CLI and the flow."""

import json

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from prefect.testing.utilities import prefect_test_harness
from safetensors.torch import load_file
from typer.testing import CliRunner

from dataassess.budgets import BUDGETS
from dataassess.config import OptimizeConfig
from dataassess.merge import linear_merge
from dataassess.optimize import make_space, optimize
from dataassess.steps import Steps
from dataassess.store import Store
from dataassess.truth import Truth, apportion, train_truth, weighted_sequences
from flows.cli import app
from flows.intake import intake
from registry.tracking import embedded_uri
from tests.conftest import demo_docs, prepare_pool, run_pipeline, write_jsonl, write_toml


def k1(settings):
    return settings.model_copy(update={"rank": settings.rank.model_copy(update={"k_max": 1})})


def windows_of(settings, unit, length):
    raw = load_file(str(settings.store / "units" / unit.digest[:24] / "tokens.safetensors"))["tokens"].tolist()
    return [tuple(raw[i : i + length]) for i in range(0, len(raw) - length + 1, length)]


def test_bounds_and_the_repetition_cap_hold_for_every_point(settings, corpus):
    models = run_pipeline(corpus, k1(settings), progress=False).models
    budget = settings.units.tokens
    distinct = {}
    for m in models.values():
        distinct[m.partition] = distinct.get(m.partition, 0) + m.source_tokens
    cfg = OptimizeConfig(min_share={"jargon": 0.1}, max_share=0.6, max_epochs=0.5)
    space = make_space(models, cfg, budget)
    assert space.partitions == tuple(sorted(distinct))
    expected_upper = [min(0.6, 0.5 * distinct[p] / budget) for p in space.partitions]  # half an epoch of each partition
    assert space.upper.tolist() == pytest.approx(expected_upper)
    assert any(u < 0.6 for u in expected_upper), "the fixture has a partition smaller than the budget"
    rng = np.random.default_rng(0)
    points = [
        space.uniform,
        space.natural,
        *space.vertices(),
        *space.sample(rng, 300),
        *space.sample(rng, 50, around=space.vertices()[0], concentration=40.0),
    ]
    for w in points:
        assert w.sum() == pytest.approx(1.0, abs=1e-5)
        assert (w >= space.lower - 1e-6).all() and (w <= space.upper + 1e-6).all(), w
        assert w[space.partitions.index("jargon")] >= 0.1 - 1e-6
    with pytest.raises(ValueError, match="no weights fit"):
        make_space(models, OptimizeConfig(min_share=0.3), budget)  # 4 partitions x 0.3 > 1
    with pytest.raises(ValueError, match="no weights fit"):
        make_space(models, OptimizeConfig(max_epochs=0.01), budget)  # the caps leave less than the budget
    with pytest.raises(ValueError, match="unknown partitions"):
        make_space(models, OptimizeConfig(max_share={"nope": 0.5}), budget)


def test_weighted_truth_draws_each_units_share_of_the_budget(settings, corpus):
    inputs = prepare_pool(corpus, settings)
    units, length, budget = inputs.units[:3], settings.train.seq_len, settings.units.tokens
    shares = {units[0].name: 0.5, units[1].name: 0.3, units[2].name: 0.2}
    seqs, counts = weighted_sequences(Store(settings.store), units, shares, length, budget, data_seed=0)
    assert len(seqs) * length == budget and sum(counts.values()) == budget // length
    rows, start = [tuple(r) for r in seqs.tolist()], 0
    for u in units:  # by hand: each unit gives its share, whole windows of its own tokens, none twice
        n = counts[u.name]
        assert abs(n * length - shares[u.name] * budget) <= length, (u.name, n)
        mine = rows[start : start + n]
        assert set(mine) <= set(windows_of(settings, u, length)) and len(set(mine)) == len(mine)
        start += n
    assert apportion([0.5, 0.25, 0.25], 10) == [5, 3, 2] and apportion([1, 1, 1], 4) == [2, 1, 1]
    # one unit asked for twice its tokens: every window is drawn, then a fresh shuffle
    twice, c = weighted_sequences(
        Store(settings.store), units[:1], {units[0].name: 1.0}, length, 2 * units[0].tokens, data_seed=0
    )
    assert sorted(map(tuple, twice.tolist())) == sorted(windows_of(settings, units[0], length) * 2) and c[
        units[0].name
    ] == len(twice)
    with Steps(settings, inputs.seed, Store(settings.store)) as steps:
        meta = train_truth(steps, units, Truth(BUDGETS["fixed"], budget, settings.fidelity.data_seed), shares)
        assert meta["kind"] == "truth" and meta["tokens"] == budget and meta["sequences_per_unit"] == counts
        uniform = train_truth(steps, units, Truth(BUDGETS["fixed"], budget, settings.fidelity.data_seed))
        assert uniform["key"] != meta["key"], "the shares are part of the key"
        with pytest.raises(ValueError, match="fixed budget"):
            train_truth(steps, units, Truth(BUDGETS["union"], budget, settings.fidelity.data_seed), shares)


def test_the_weighted_proxy_is_the_weighted_average_of_the_unit_models(settings, corpus):
    result = run_pipeline(corpus, k1(settings), progress=False)
    space = make_space(result.models, settings.optimize, settings.units.tokens)
    w = np.array([0.4, 0.3, 0.2, 0.1])
    mixture = space.mixture(w, result.pool)
    store = Store(settings.store)
    merged = linear_merge([store.weights(k) for k in mixture.model_keys], mixture.weights)
    states = {u: load_file(str(store.weights(result.models[u].key))) for u in mixture.units}
    for name in merged:  # by hand: each partition's share split over its units
        expected = sum(
            float(s) / len(space.units[p]) * states[u][name].double()
            for p, s in zip(space.partitions, w)
            for u in space.units[p]
        )
        assert torch.allclose(merged[name].double(), expected, atol=1e-6), name


def optimize_corpus(corpus, settings):
    with prepare_pool(corpus, settings) as pool:
        return optimize(pool)


def test_search_is_idempotent_and_a_warm_restart_scores_only_new_proxies(settings, corpus):
    cold = settings.model_copy(update={"optimize": settings.optimize.model_copy(update={"samples": 40})})
    first = optimize_corpus(corpus, cold)
    report = first.report
    assert set(report["weights"]) == {"drama", "jargon", "satire", "scripture"}
    assert sum(report["weights"].values()) == pytest.approx(1.0, abs=1e-5)
    assert report["surrogate"]["n_proxies"] >= 40 + 6 and -1 <= report["surrogate"]["spearman"] <= 1
    assert (
        report["objective_value"]["optimized"]
        <= min(report["objective_value"]["uniform"], report["objective_value"]["natural"]) + 1e-9
    )
    store = Store(settings.store)
    written = {p: p.stat().st_mtime_ns for p in (store.root / "scores").rglob("score.json")}

    again = optimize_corpus(corpus, cold)
    assert again.scored == [] and again.report["weights"] == report["weights"]

    write_jsonl(corpus / "wisdom" / "a.jsonl", [{**d, "domain": "wisdom"} for d in demo_docs("scripture-wisdom", 40)])
    warm = optimize_corpus(corpus, cold)
    assert "wisdom" in warm.report["weights"] and warm.report["previous_weights"] == report["weights"]
    assert set(warm.report["change"]) == set(warm.report["weights"])
    # every point scored before is in the warm design with its cached scores (wisdom at 0)
    before = {tuple(sorted(p["weights"].items())): p["scores"] for p in first.proxies}
    reused = {
        tuple(sorted((k, v) for k, v in p["weights"].items() if k != "wisdom")): p["scores"]
        for p in warm.proxies
        if p["weights"]["wisdom"] == 0
    }
    assert all(reused.get(k) == v for k, v in before.items())
    # only what is new was scored: the warm samples, the new vertex, uniform and natural, one round, the confirmations
    o = cold.optimize
    assert 0 < len(set(warm.scored)) <= o.warm_samples + 3 + o.round_samples + (o.rounds + 1 + 2)
    assert len(set(warm.scored)) < o.samples
    assert all(p.stat().st_mtime_ns == t for p, t in written.items()), "no earlier score was recomputed"


def test_optimize_cli_verifies_by_training_and_logs_to_mlflow(settings, corpus, tmp_path):
    toml = write_toml(settings, tmp_path / "o.toml")
    res = CliRunner().invoke(app, ["--config", str(toml), "optimize", str(corpus), "--json", "--verify"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout[res.stdout.index("{") :])
    assert {"objective", "weights", "predicted", "surrogate", "verified"} <= set(report)
    assert {"spearman", "n_proxies"} <= set(report["surrogate"])
    verified = report["verified"]
    assert {"optimized", "uniform", "natural", "best_subset"} <= set(verified)
    assert set(verified["optimized"]) == set(report["predicted"])
    budget, length = settings.units.tokens, settings.train.seq_len
    for p, tokens in verified["tokens_per_partition"]["optimized"].items():  # the trained mixture follows the weights
        assert abs(tokens - report["weights"][p] * budget) <= length * 2, (p, tokens)
    client = MlflowClient(embedded_uri(Store(settings.store)))
    (run,) = client.search_runs([client.get_experiment_by_name("dataassess-optimize").experiment_id])
    assert run.data.metrics["verified.optimized.objective"] == pytest.approx(verified["objective"]["optimized"])
    # each mixture trained in 3 data orders: the mean and its standard error, by hand, and a verdict beyond the noise
    assert len(verified["data_orders"]) == 3 and settings.train.seed not in verified["data_orders"]
    for name, runs in verified["objective_by_order"].items():
        assert len(runs) == 3 and len(set(runs)) == 3, "three data orders, three models"
        mean = sum(runs) / 3
        se = (sum((r - mean) ** 2 for r in runs) / 2) ** 0.5 / 3**0.5
        assert verified["objective"][name] == pytest.approx(mean) and verified["objective_se"][name] == pytest.approx(
            se
        )
        if name != "optimized":
            gap, margin = (
                mean - verified["objective"]["optimized"],
                2 * (se**2 + verified["objective_se"]["optimized"] ** 2) ** 0.5,
            )
            expected = "beats" if gap > margin else "loses to" if -gap > margin else "within noise of"
            assert verified["verdicts"][name] == expected
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "weights.json",
        "weights.png",
        "surrogate_fit.png",
        "verified.json",
    }
    res = CliRunner().invoke(app, ["--config", str(toml), "optimize", str(corpus), "--no-mlflow"])
    assert res.exit_code == 0 and "mixture weights" in res.output and "scored now 0" in res.output, res.output
    bad = write_toml(
        settings.model_copy(update={"optimize": settings.optimize.model_copy(update={"objective": "nope"})}),
        tmp_path / "b.toml",
    )
    res = CliRunner().invoke(app, ["--config", str(bad), "optimize", str(corpus)])
    assert res.exit_code == 2 and "optimize.objective 'nope'" in res.output


@pytest.fixture()
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_an_intake_re_optimizes_and_links_the_weights_to_its_ranking_run(settings, corpus, harness):
    on = settings.model_copy(update={"optimize": settings.optimize.model_copy(update={"on_intake": True})})
    first = intake(str(corpus), on.model_dump(mode="json"), pool="w")
    assert (
        set(first["weights"]["weights"]) == {"drama", "jargon", "satire", "scripture"}
        and first["weights"]["change"] is None
    )
    write_jsonl(corpus / "wisdom" / "a.jsonl", [{**d, "domain": "wisdom"} for d in demo_docs("scripture-wisdom", 40)])
    second = intake(str(corpus), on.model_dump(mode="json"), pool="w")
    moved = second["weights"]["change"]
    assert "wisdom" in moved and moved["wisdom"] == pytest.approx(second["weights"]["weights"]["wisdom"])
    client = MlflowClient(embedded_uri(Store(settings.store)))
    ranking = client.get_run(second["ranking_run_id"])
    assert ranking.data.tags["dataassess.optimize_run"] == second["weights"]["optimize_run_id"]
    assert (
        client.get_run(second["weights"]["optimize_run_id"]).data.tags["dataassess.ranking_run"]
        == second["ranking_run_id"]
    )
    assert "weight.wisdom" in ranking.data.metrics
