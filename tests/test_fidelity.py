import json
from collections import Counter

import numpy as np
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from dataassess.budgets import BUDGETS
from dataassess.calibration import loo_predictions
from dataassess.fidelity import decision_accuracy, figures, sample_mixtures, top_k_agreement
from dataassess.steps import Steps
from dataassess.store import Store
from dataassess.truth import Truth, budget_sequences, train_truth, union_sequences
from flows.cli import app
from tests.conftest import latest, prepare_pool, run_pipeline, write_toml


def test_figures_match_a_hand_computed_case():
    proxy, truth, naive = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0], [4.0, 3.0, 2.0, 1.0]
    f = figures(proxy, truth, naive, n_boot=200)
    # deviations (-1.5, -.5, .5, 1.5) and (-1.5, .5, -.5, 1.5): cov 4, variances 5 and 5
    assert f["pearson"] == pytest.approx(0.8)
    assert f["spearman"] == pytest.approx(0.8)
    assert f["kendall"] == pytest.approx((5 - 1) / 6)  # one discordant pair of six
    assert f["decision_accuracy"] == pytest.approx(5 / 6)
    assert f["top1_agreement"] == 1.0 and f["top3_agreement"] == 1.0
    assert f["baseline_pearson"] == pytest.approx(-0.8)
    assert f["baseline_decision_accuracy"] == pytest.approx(1 / 6)
    lo, hi = f["pearson_ci"]
    assert lo <= hi <= 1.0
    assert f["n_mixtures"] == 4
    assert decision_accuracy([1, 1], [1, 2]) == 0.0 and decision_accuracy([1, 1], [3, 3]) == 1.0
    assert top_k_agreement([3, 1, 2], [1, 2, 3], 1) == 0.0


def test_sampling_is_stratified_by_size_and_has_no_duplicates():
    units = [f"u{i}" for i in range(8)]
    mixes = sample_mixtures(units, 24, 3)
    assert len(mixes) == len(set(mixes)) == 24
    assert Counter(len(m) for m in mixes) == {1: 8, 2: 8, 3: 8}  # single units count
    assert sample_mixtures(units, 24, 3) == mixes  # deterministic
    assert len(sample_mixtures(["a", "b", "c"], 20, 2)) == 6  # all that exist: 3 singles, 3 pairs


def test_ground_truth_is_trained_on_the_exact_union(settings, corpus):
    inputs = prepare_pool(corpus, settings)
    store, units, length = Store(settings.store), inputs.units[:2], settings.train.seq_len
    seqs = union_sequences(store, units, length)
    # by hand: every whole window of each unit's stored tokens, each exactly once
    raw = [
        load_file(str(settings.store / "units" / u.digest[:24] / "tokens.safetensors"))["tokens"].tolist()
        for u in units
    ]
    windows = [tuple(r[i : i + length]) for r in raw for i in range(0, len(r) - length + 1, length)]
    assert sorted(map(tuple, seqs.tolist())) == sorted(windows)
    assert len(seqs) * length == 2 * settings.units.tokens
    with Steps(settings, inputs.seed, Store(settings.store)) as steps:
        union = Truth(BUDGETS["union"], settings.units.tokens, settings.train.seed)
        meta = train_truth(steps, units, union)
        assert meta["tokens"] == 2 * settings.units.tokens  # k x the unit budget: one pass over the union
        assert meta["unit_digests"] == [u.digest for u in units]
        assert train_truth(steps, list(reversed(units)), union)["key"] == meta["key"]  # cached


def test_fixed_budget_truth_trains_on_exactly_b_tokens_of_the_mixtures_units(settings, corpus):
    inputs = prepare_pool(corpus, settings)
    store, units, length = Store(settings.store), inputs.units[:2], settings.train.seq_len
    budget = settings.units.tokens  # B: half of the pair's union
    drawn = budget_sequences(store, units, length, budget, data_seed=0)
    raw = [
        load_file(str(settings.store / "units" / u.digest[:24] / "tokens.safetensors"))["tokens"].tolist()
        for u in units
    ]
    windows = [tuple(r[i : i + length]) for r in raw for i in range(0, len(r) - length + 1, length)]
    rows = [tuple(r) for r in drawn.tolist()]
    assert len(rows) * length == budget and len(set(rows)) == len(rows)  # B tokens, each window at most once
    assert set(rows) <= set(windows)  # only from the mixture's units
    assert Counter(rows) != Counter(windows[: len(rows)]), "drawn from the shuffled union, not the first unit"
    with Steps(settings, inputs.seed, Store(settings.store)) as steps:
        meta = train_truth(steps, units, Truth(BUDGETS["fixed"], budget, settings.train.seed))
        assert (
            meta["kind"] == "truth" and meta["tokens"] == budget and meta["unit_digests"] == [u.digest for u in units]
        )


def test_a_single_units_truth_is_its_unit_model_at_the_unit_budget(settings, corpus):
    inputs = prepare_pool(corpus, settings)
    unit = inputs.units[0]
    with Steps(settings, inputs.seed, Store(settings.store)) as steps:
        for budget in BUDGETS.values():
            meta = train_truth(steps, [unit], Truth(budget, unit.tokens, settings.train.seed))
            assert meta["kind"] == "models" and meta["key"] == steps.train(unit).key
        assert not (settings.store / "truth").exists(), "nothing trained for them"
        other = train_truth(steps, [unit], Truth(BUDGETS["fixed"], unit.tokens // 2, settings.train.seed))
        assert other["kind"] == "truth" and other["tokens"] == unit.tokens // 2
        again = train_truth(
            steps, [unit], Truth(BUDGETS["fixed"], unit.tokens, settings.train.seed + 1)
        )  # another data order
        assert again["kind"] == "truth" and again["key"] != other["key"]


def test_leave_one_out_calibration_never_sees_the_held_out_mixture():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 1.0], [3.0, 1.0], [4.0, 2.0], [5.0, 3.0]])
    y = np.array([1.0, 2.5, 2.9, 4.6, 5.2, 7.1])
    loo = loo_predictions(x, y, alphas=(1e-12,))  # ridge this weak is least squares
    for i in range(len(y)):  # by hand: least squares with an intercept on the other five points
        rest = np.delete(np.column_stack([np.ones(len(y)), x]), i, axis=0)
        beta = np.linalg.lstsq(rest, np.delete(y, i), rcond=None)[0]
        assert loo[i] == pytest.approx(beta @ np.r_[1.0, x[i]], abs=1e-6)
        moved = y.copy()
        moved[i] += 100.0  # the held-out answer changes: its own prediction must not
        assert loo_predictions(x, moved, alphas=(1e-12,))[i] == pytest.approx(loo[i], abs=1e-6)


def test_union_ranking_without_a_calibration_never_compares_sizes(settings, corpus):
    union = settings.model_copy(update={"rank": settings.rank.model_copy(update={"budget": "union"})})
    result = run_pipeline(corpus, union, progress=False)
    ks = [r.k for r in result.ranking]
    assert ks == sorted(ks) and len(set(ks)) == 2  # grouped by size, never interleaved
    assert all(r.rank == r.rank_in_size for r in result.ranking)
    for k in set(ks):
        same = [r.macro for r in result.ranking if r.k == k]
        assert same == sorted(same)
    snapshot = latest(settings)
    assert snapshot["budget"]["mode"] == "union" and snapshot["budget"]["calibrated"] is False
    assert "within each size" in snapshot["budget"]["score"]


def test_fidelity_cli_both_budgets_and_a_calibrated_union_ranking(settings, corpus):
    toml = write_toml(settings, settings.store.parent / "f.toml")
    keys = {
        "pearson",
        "spearman",
        "kendall",
        "decision_accuracy",
        "n_mixtures",
        "baseline_pearson",
        "baseline_decision_accuracy",
        "ceiling_spearman",
        "ceiling_decision_accuracy",
    }
    reports = {}
    for budget in ("fixed", "union"):
        res = CliRunner().invoke(
            app,
            [
                "--config",
                str(toml),
                "fidelity",
                str(corpus),
                "--budget",
                budget,
                "--n",
                "9",
                "--k-max",
                "2",
                "--ceiling",
                "3",
                "--json",
                "--no-mlflow",
            ],
        )
        assert res.exit_code == 0, res.output
        report = reports[budget] = json.loads(res.stdout)
        assert report["budget"] == budget and set(report["eval_sets"]) and "macro" in report and "by_k" in report
        for figs in [*report["eval_sets"].values(), report["macro"]]:
            assert keys <= set(figs) and figs["n_mixtures"] == 9 and figs["ceiling_n_mixtures"] == 3
            assert all(v is None or -1 <= v <= 1 for k, v in figs.items() if k in ("pearson", "spearman", "kendall"))
            assert (budget == "union") == ("raw" in figs)
    rows = json.loads((settings.store / "pools" / "corpus" / "fidelity.json").read_text())["rows"]
    singles = [r for r in rows if r["k"] == 1]
    assert singles and all(r["truth"] == r["proxy"] and r["truth_kind"] == "models" for r in singles)
    assert (settings.store / "pools" / "corpus" / "calibration.json").exists()
    union = settings.model_copy(update={"rank": settings.rank.model_copy(update={"budget": "union"})})
    ranking = run_pipeline(corpus, union, progress=False).ranking
    for row in ranking:
        assert set(row.intervals) == set(row.scores) == set(row.proxy_scores)
        assert all(lo < row.scores[s] < hi for s, (lo, hi) in row.intervals.items())
    snapshot = latest(settings)
    assert snapshot["budget"]["calibrated"] is True
    fidelity = snapshot["fidelity"]  # the pool's latest report (union), as every ranking shows it
    assert (
        fidelity["measured"]
        and fidelity["budget"] == "union"
        and fidelity["spearman"] == reports["union"]["macro"]["spearman"]
    )
    res = CliRunner().invoke(app, ["--config", str(toml), "ranking"])
    assert res.exit_code == 0 and "fidelity (union budget, 9 mixtures trained" in res.stdout


def test_compare_merges_measures_every_method_on_the_same_truths_with_the_report_s_figures(settings, corpus):
    from dataassess.merge import METHODS

    toml = write_toml(settings, settings.store.parent / "f.toml")
    common = ["--n", "6", "--k-max", "2", "--ceiling", "2", "--json", "--no-mlflow"]
    res = CliRunner().invoke(app, ["--config", str(toml), "fidelity", str(corpus), "--compare-merges", *common])
    assert res.exit_code == 0, res.output
    compared = json.loads(res.stdout)
    assert compared["budget"] == "fixed" and set(compared["methods"]) == set(METHODS)
    truths = {p.parent.name for p in (settings.store / "truth").glob("*/meta.json")}
    single = CliRunner().invoke(app, ["--config", str(toml), "fidelity", str(corpus), *common])
    assert single.exit_code == 0, single.output
    report = json.loads(single.stdout)
    assert {p.parent.name for p in (settings.store / "truth").glob("*/meta.json")} == truths, "no truth trained again"
    linear = compared["methods"]["linear"]
    assert set(linear) == set(report) and linear["merge"] == report["merge"] == {"method": "linear", "params": {}}
    assert linear["eval_sets"] == report["eval_sets"] and linear["macro"] == report["macro"]
    for name, method in compared["methods"].items():
        assert method["merge"]["method"] == name and set(method["eval_sets"]) == set(report["eval_sets"])
        assert set(method["macro"]) == set(report["macro"]) and method["macro"]["n_mixtures"] == 6
    ta = CliRunner().invoke(
        app, ["--config", str(toml), "fidelity", str(corpus), "--merge-method", "task_arithmetic", *common]
    )
    assert ta.exit_code == 0, ta.output
    assert json.loads(ta.stdout)["macro"] == compared["methods"]["task_arithmetic"]["macro"]
    kept = json.loads((settings.store / "pools" / "corpus" / "fidelity.json").read_text())["report"]
    assert kept["merge"]["method"] == "linear", "only the pool's own method becomes its fidelity"
    bad = CliRunner().invoke(app, ["--config", str(toml), "fidelity", str(corpus), "--merge-method", "nope"])
    assert bad.exit_code == 2 and "unknown merge method 'nope'" in bad.output
