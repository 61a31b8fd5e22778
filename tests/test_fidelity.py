import itertools
import json
import logging
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import stats
from typer.testing import CliRunner

from dataassess import agreement
from dataassess.budgets import BUDGETS
from dataassess.calibration import fit_set, loo_predictions
from dataassess.fidelity import sample_mixtures
from dataassess.files import read_json, write_json
from dataassess.steps import Steps
from dataassess.store import Store
from dataassess.truth import Truth, budget_sequences, train_truth, union_sequences
from flows.cli import app
from registry.fidelity import FIDELITY_EXPERIMENT
from registry.tracking import connect
from tests.conftest import latest, prepare_pool, run_pipeline, write_toml


def test_agreement_figures_match_hand_computed_cases():
    proxy, truth = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0])
    f = agreement.figures(proxy, truth, threshold=0.0, n_boot=200)
    # deviations (-1.5, -.5, .5, 1.5) and (-1.5, .5, -.5, 1.5): cov 4, variances 5 and 5
    assert f["pearson"] == pytest.approx(0.8) and f["spearman"] == pytest.approx(0.8)
    assert f["kendall"] == pytest.approx((5 - 1) / 6)  # one discordant pair of six
    assert f["decision_accuracy"] == pytest.approx(5 / 6) and f["resolvable_decision_accuracy"] == pytest.approx(5 / 6)
    assert f["n_resolvable_pairs"] == 6 and f["top1_agreement"] == 1.0 and f["top3_agreement"] == 1.0
    lo, hi = f["spearman_ci"]
    assert -1.0 <= lo <= hi <= 1.0
    # truths 1, 3, 2, 4: a threshold of log 1.6 = 0.47 keeps the pairs of truths (1, 4), (1, 3), (1, 2), (2, 4)
    # [log ratios 1.39, 1.10, 0.69, 0.69] and drops (3, 2) and (3, 4) [0.41, 0.29]; the proxy's one wrong
    # pair is (3, 2), so it gets all four decisions right
    acc, n = agreement.resolvable(proxy, truth, np.log(1.6))
    assert (acc, n) == (1.0, 4)
    # a tie in the score is half right; a constant score (the seed) is 0.5 on every decision
    assert agreement.resolvable(np.array([1.0, 1.0, 3.0]), np.array([1.0, 2.0, 3.0]), 0.0) == (pytest.approx(5 / 6), 3)
    assert agreement.headline(np.full(4, 7.0), truth, 0.0)["resolvable_decision_accuracy"] == 0.5
    assert agreement.decision_accuracy(np.array([1.0, 1.0]), np.array([3.0, 3.0])) == 1.0
    # noise: two replicate pairs with log ratios a and b give sigma = sqrt((a^2 + b^2) / 4)
    rows = [
        {"truth": {"s": 10.0}, "truth_replicate": {"s": 11.0}},
        {"truth": {"s": 20.0}, "truth_replicate": {"s": 19.0}},
        {"truth": {"s": 30.0}, "truth_replicate": None},
    ]
    a, b = np.log(10 / 11), np.log(20 / 19)
    assert agreement.noise(rows, "s") == pytest.approx(np.sqrt((a**2 + b**2) / 4))


def test_sampling_is_stratified_by_size_and_has_no_duplicates(caplog):
    units = [f"u{i}" for i in range(8)]
    mixes = sample_mixtures(units, 24, 3)
    assert len(mixes) == len(set(mixes)) == 24
    assert Counter(len(m) for m in mixes) == {1: 8, 2: 8, 3: 8}  # single units count
    assert sample_mixtures(units, 24, 3) == mixes  # deterministic
    with caplog.at_level(logging.WARNING, logger="dataassess"):
        assert len(sample_mixtures(["a", "b", "c"], 20, 2)) == 6  # all that exist: 3 singles, 3 pairs
    assert [r.getMessage() for r in caplog.records] == [
        "3 units make only 6 mixtures of up to 2 units: all are measured, not the 20 asked for (--n, fidelity.mixtures)"
    ]


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
        union = Truth(BUDGETS["union"], settings.units.tokens, settings.fidelity.data_seed)
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
        meta = train_truth(steps, units, Truth(BUDGETS["fixed"], budget, settings.fidelity.data_seed))
        assert (
            meta["kind"] == "truth" and meta["tokens"] == budget and meta["unit_digests"] == [u.digest for u in units]
        )


def test_a_single_units_truth_is_another_model_than_its_unit_model(settings, corpus):
    """Truths train in a data order of their own: at the unit budget, a single unit's truth sees the unit's tokens
    in another order, so its weights differ from the unit model's."""
    inputs = prepare_pool(corpus, settings)
    unit = inputs.units[0]
    with Steps(settings, inputs.seed, Store(settings.store)) as steps:
        model = steps.train(unit)
        mine = load_file(str(settings.store / "models" / model.key / "model.safetensors"))
        for budget in BUDGETS.values():
            meta = train_truth(steps, [unit], Truth(budget, unit.tokens, settings.fidelity.data_seed))
            assert meta["kind"] == "truth" and meta["key"] != model.key and meta["tokens"] == unit.tokens
            truth = load_file(str(settings.store / "truth" / meta["key"] / "model.safetensors"))
            assert mine.keys() == truth.keys()
            assert any(not torch.equal(mine[k], truth[k]) for k in mine), "the truth is the unit model"
        with pytest.raises(ValueError, match="data order of its own"):
            train_truth(steps, [unit], Truth(BUDGETS["fixed"], unit.tokens, settings.train.seed))
    bad = CliRunner().invoke(
        app,
        ["--config", str(write_toml(settings, settings.store.parent / "b.toml")), "config"],
        env={"DATAASSESS_FIDELITY__DATA_SEED": str(settings.train.seed)},
    )
    assert bad.exit_code == 2 and "must differ from train.seed" in bad.output


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


def test_a_calibration_predicts_its_least_squares_fit_on_log_proxy_log_k_and_their_product():
    rng = np.random.default_rng(0)
    proxy, k = rng.uniform(200, 900, 12), np.repeat([1, 2, 3], 4)
    log_truth = 0.4 + 0.9 * np.log(proxy) - 0.3 * np.log(k) + 0.02 * np.log(proxy) * np.log(k)
    truth = np.exp(log_truth + rng.normal(0, 0.01, 12))
    fitted, _ = fit_set(list(proxy), list(truth), list(k), alphas=(1e-12,))
    design = lambda p, n: np.r_[1.0, math.log(p), math.log(n), math.log(p) * math.log(n)]  # noqa: E731
    beta = np.linalg.lstsq(np.array([design(p, n) for p, n in zip(proxy, k)]), np.log(truth), rcond=None)[0]
    for p, n in [(300.0, 1), (500.0, 2), (800.0, 3)]:
        ppl, low, high = fitted.predict(p, n)
        assert math.log(ppl) == pytest.approx(beta @ design(p, n), abs=1e-6)
        assert low < ppl < high


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


def by_hand(rows: list[dict], eval_set: str | None, score: str, seed: dict, sigma_rows: list[dict]) -> dict:
    """A report's figures for one set (None: the macro), recomputed from the rows without the code under test."""

    def val(r, col):
        if col == "seed":
            v = seed
        else:
            v = r[col]
        return v[eval_set] if eval_set else math.exp(sum(math.log(x) for x in v.values()) / len(v))

    replicated = [r for r in sigma_rows if r["truth_replicate"]]
    d2 = [(math.log(val(r, "truth")) - math.log(val(r, "truth_replicate"))) ** 2 for r in replicated]
    threshold = 2 * math.sqrt(2) * math.sqrt(sum(d2) / (2 * len(d2)))

    def resolvable(col, among):
        right = n = 0
        for a, b in itertools.combinations(among, 2):
            ta, tb = val(a, "truth"), val(b, "truth")
            if abs(math.log(ta) - math.log(tb)) <= threshold:
                continue
            n += 1
            sa, sb = val(a, col), val(b, col)
            right += 0.5 if sa == sb else float((sa < sb) == (ta < tb))
        return (right / n if n else None), n

    def rho(col, among):
        return stats.spearmanr([val(r, col) for r in among], [val(r, "truth") for r in among]).statistic

    out = {"threshold": threshold, "spearman": rho(score, rows)}
    out["resolvable"] = resolvable(score, rows)
    out["naive"] = resolvable("baseline", rows)
    out["seed"] = resolvable("seed", rows)
    mine = [r for r in rows if r["truth_replicate"]]
    out["ceiling_score"], out["ceiling_replicate"] = resolvable(score, mine), resolvable("truth_replicate", mine)
    return out


def assert_recomputed(report: dict) -> None:
    """Every set's, the macro's and each size's figures match a recomputation from the report's rows."""
    rows, seed, score = report["rows"], report["seed"], report["score"]
    groups = [(report, rows)] + [(report["by_k"][k], [r for r in rows if str(r["k"]) == k]) for k in report["by_k"]]
    for part, among in groups:
        for name in [*report["eval_sets"], None]:
            f = part["macro"] if name is None else part["eval_sets"][name]
            mine = by_hand(among, name, score, seed, rows)
            assert f["threshold_log_ppl"] == pytest.approx(mine["threshold"])
            assert f["spearman"] == pytest.approx(mine["spearman"])
            got = lambda figs: (figs.get("resolvable_decision_accuracy"), figs.get("n_resolvable_pairs"))  # noqa: E731
            assert got(f) == pytest.approx(mine["resolvable"]), name
            assert got(f["baselines"]["naive"]) == pytest.approx(mine["naive"]), name
            assert got(f["baselines"]["seed"]) == pytest.approx(mine["seed"]), name
            if mine["ceiling_score"][1]:
                assert got(f["ceiling"]["score"]) == pytest.approx(mine["ceiling_score"]), name
                assert got(f["ceiling"]["replicate"]) == pytest.approx(mine["ceiling_replicate"]), name


def test_the_committed_fidelity_reports_recompute_from_their_rows():
    """docs/fidelity.md's tables come from these reports: each one's figures follow from its own rows."""
    reports = sorted((Path(__file__).resolve().parents[1] / "docs" / "fidelity-data").glob("*.json"))
    assert reports, "no committed fidelity report"
    for path in reports:
        report = json.loads(path.read_text())
        assert report["rows"] and report["noise"]["n_replicates"] >= 8, path.name
        assert_recomputed(report)


def test_fidelity_cli_both_budgets_recomputable_rows_and_the_agreement_line(settings, corpus):
    toml = write_toml(settings, settings.store.parent / "f.toml")
    res = CliRunner().invoke(app, ["--config", str(toml), "ranking"])
    assert res.exit_code == 2 and "no ranking yet" in res.output
    run_pipeline(corpus, settings, progress=False)
    res = CliRunner().invoke(app, ["--config", str(toml), "ranking"])
    assert res.exit_code == 0 and "fidelity: not measured for this pool at the fixed budget" in res.stdout, res.stdout
    reports = {}
    common = ["--n", "9", "--k-max", "2", "--replicates", "4", "--json"]
    for budget in ("fixed", "union"):  # the union report is logged to MLflow, its calibration with it
        mlflow = ["--no-mlflow"] if budget == "fixed" else []
        res = CliRunner().invoke(
            app, ["--config", str(toml), "fidelity", str(corpus), "--budget", budget, *common, *mlflow]
        )
        assert res.exit_code == 0, res.output
        report = reports[budget] = json.loads(res.stdout)
        assert report["budget"] == budget and report["score"] == ("calibrated" if budget == "union" else "proxy")
        rows = report["rows"]
        assert len(rows) == 9 and sum(1 for r in rows if r["truth_replicate"]) == 4
        assert {r["k"] for r in rows if r["truth_replicate"]} == {1, 2}, "every size replicated"
        for r in rows:
            assert {"units", "k", "shares", "proxy", "truth", "truth_replicate", "baseline"} <= set(r)
            assert (budget == "union") == ("calibrated" in r)
            assert r["truth"] != r["proxy"], "no truth is a unit model (or a proxy)"
        sigma = report["noise"]["sigma_log_ppl"]
        assert set(sigma) == {*report["eval_sets"], "macro"} and all(v > 0 for v in sigma.values())
        assert report["noise"]["n_replicates"] == 4 and set(report["by_k"]) == {"1", "2"}
        for figs in [*report["eval_sets"].values(), report["macro"]]:
            assert figs["n_mixtures"] == 9 and figs["ceiling"]["n_mixtures"] == 4
            assert {"naive", "seed"} == set(figs["baselines"]) and (budget == "union") == ("raw" in figs)
        assert_recomputed(report)
    truths = list((settings.store / "truth").glob("*/meta.json"))
    assert len(truths) == 2 * (9 + 4), "a truth and a replicate trained per budget; none is a unit model"
    # without --json, a table of the same figures (everything cached: nothing is trained again)
    table = [c for c in common if c != "--json"] + ["--no-mlflow"]  # one fidelity run in MLflow, the union one
    res = CliRunner().invoke(app, ["--config", str(toml), "fidelity", str(corpus), "--budget", "fixed", *table])
    assert res.exit_code == 0, res.output
    assert len(list((settings.store / "truth").glob("*/meta.json"))) == len(truths)
    printed = {line.split()[0]: line.split()[1:] for line in res.stdout.splitlines()[2:] if line.strip()}
    fixed = reports["fixed"]
    for name, figs in [*fixed["eval_sets"].items(), ("MACRO", fixed["macro"])]:
        sigma = fixed["noise"]["sigma_log_ppl"]["macro" if name == "MACRO" else name]
        ceiling = figs["ceiling"]
        expected = [
            sigma,
            figs["spearman"],
            figs["decision_accuracy"],
            figs["resolvable_decision_accuracy"],
            figs["n_resolvable_pairs"],
            figs["baselines"]["naive"]["resolvable_decision_accuracy"],
            figs["baselines"]["seed"]["resolvable_decision_accuracy"],
            ceiling["score"]["resolvable_decision_accuracy"],
            ceiling["replicate"]["resolvable_decision_accuracy"],
            ceiling["score"]["spearman"],
            ceiling["replicate"]["spearman"],
        ]
        assert printed[name] == [str(v) if isinstance(v, int) else f"{v:.3f}" for v in expected], name
    stored = read_json(settings.store / "pools" / "corpus" / "calibration.json")
    assert stored["features"] == ["log proxy perplexity", "log k", "log proxy perplexity x log k"]
    client = connect(Store(settings.store))
    (run,) = client.search_runs([client.get_experiment_by_name(FIDELITY_EXPERIMENT).experiment_id])
    for name, fitted in stored["sets"].items():  # one parameter per feature, named after it
        logged = float(run.data.params[f"calibration.{name}.coef_log_proxy_perplexity_x_log_k"])
        assert logged == pytest.approx(fitted["coef"][2])
    res = CliRunner().invoke(app, ["--config", str(toml), "ranking"])  # the fixed ranking, measured since
    f = reports["fixed"]["macro"]
    pct = lambda v: f"{100 * v:.0f}%"  # noqa: E731
    line = (
        f"agrees with real training on {pct(f['resolvable_decision_accuracy'])} of resolvable decisions "
        f"({f['n_resolvable_pairs']} pairs; ceiling {pct(f['ceiling']['replicate']['resolvable_decision_accuracy'])})"
    )
    assert res.exit_code == 0 and "fidelity (fixed budget, 9 mixtures trained" in res.stdout and line in res.stdout
    shown = json.loads(CliRunner().invoke(app, ["--config", str(toml), "ranking", "--json"]).stdout)["fidelity"]
    assert shown["resolvable_decision_accuracy"] == f["resolvable_decision_accuracy"]
    union = settings.model_copy(update={"rank": settings.rank.model_copy(update={"budget": "union"})})
    ranking = run_pipeline(corpus, union, progress=False).ranking
    for row in ranking:
        assert set(row.intervals) == set(row.scores) == set(row.proxy_scores)
        assert all(lo < row.scores[s] < hi for s, (lo, hi) in row.intervals.items())
    snapshot = latest(settings)
    assert snapshot["budget"]["calibrated"] is True
    fidelity = snapshot["fidelity"]  # the pool's latest report at the union budget, as every ranking shows it
    assert fidelity["measured"] and fidelity["budget"] == "union"
    assert fidelity["resolvable_decision_accuracy"] == reports["union"]["macro"]["resolvable_decision_accuracy"]
    stored["features"] = stored["features"][:2]  # fitted on other features (an older version): not used
    write_json(settings.store / "pools" / "corpus" / "calibration.json", stored)
    run_pipeline(corpus, union, progress=False)
    assert latest(settings)["budget"]["calibrated"] is False


def test_compare_merges_measures_every_method_on_the_same_truths_with_the_report_s_figures(settings, corpus):
    from dataassess.merge import METHODS

    toml = write_toml(settings, settings.store.parent / "f.toml")
    common = ["--n", "6", "--k-max", "2", "--replicates", "2", "--json", "--no-mlflow"]
    res = CliRunner().invoke(app, ["--config", str(toml), "fidelity", str(corpus), "--compare-merges", *common])
    assert res.exit_code == 0, res.output
    compared = json.loads(res.stdout)
    assert compared["budget"] == "fixed" and set(compared["methods"]) == set(METHODS)
    truths = {p.parent.name for p in (settings.store / "truth").glob("*/meta.json")}
    single = CliRunner().invoke(app, ["--config", str(toml), "fidelity", str(corpus), *common])
    assert single.exit_code == 0, single.output
    report = json.loads(single.stdout)
    assert {p.parent.name for p in (settings.store / "truth").glob("*/meta.json")} == truths, "no truth trained again"
    bare = ["fidelity", str(corpus), "--n", "6", "--k-max", "2", "--replicates", "0", "--no-mlflow"]
    unreplicated = CliRunner().invoke(app, ["--config", str(toml), *bare])
    assert unreplicated.exit_code == 0, unreplicated.output
    assert "no replicate truths (--replicates 0): no noise model" in unreplicated.stdout
    assert " n/a" in unreplicated.stdout.split("MACRO", 1)[1].splitlines()[0], "the macro row's sigma is not measured"
    own = settings.merge.method  # the pool's own method: the one a plain fidelity run measures
    mine = compared["methods"][own]
    assert set(mine) == set(report) and mine["merge"] == report["merge"] == {"method": own, "params": {}}
    assert mine["eval_sets"] == report["eval_sets"] and mine["macro"] == report["macro"]
    for name, method in compared["methods"].items():
        assert method["merge"]["method"] == name and set(method["eval_sets"]) == set(report["eval_sets"])
        assert set(method["macro"]) == set(report["macro"]) and method["macro"]["n_mixtures"] == 6
    ta = CliRunner().invoke(
        app, ["--config", str(toml), "fidelity", str(corpus), "--merge-method", "task_arithmetic", *common]
    )
    assert ta.exit_code == 0, ta.output
    assert json.loads(ta.stdout)["macro"] == compared["methods"]["task_arithmetic"]["macro"]
    kept = json.loads((settings.store / "pools" / "corpus" / "fidelity-fixed.json").read_text())["report"]
    assert kept["merge"]["method"] == own, "only the pool's own method becomes its fidelity"
    bad = CliRunner().invoke(app, ["--config", str(toml), "fidelity", str(corpus), "--merge-method", "nope"])
    assert bad.exit_code == 2 and "unknown merge method 'nope'" in bad.output

    # the study's weight-space comparison, on the same store and sample: it reads those models, trains nothing
    out = settings.store.parent / "space.json"
    script = Path(__file__).resolve().parents[1] / "scripts" / "weight_space.py"
    args = [str(settings.store), str(corpus), str(out), "--n", "6", "--k-max", "2", "--replicates", "2"]
    done = subprocess.run(
        [sys.executable, str(script), *args], env={**os.environ, "DATAASSESS_CONFIG": str(toml)}, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()
    assert {p.parent.name for p in (settings.store / "truth").glob("*/meta.json")} == truths, "nothing trained"
    more = subprocess.run(  # a sample the run did not train: refused, not trained
        [sys.executable, str(script), *args, "--replicates", "3"],
        env={**os.environ, "DATAASSESS_CONFIG": str(toml)},
        capture_output=True,
        text=True,
    )
    assert more.returncode == 1 and "error: 1 of the run's 9 ground truths are not in" in more.stderr, more.stderr
    assert {p.parent.name for p in (settings.store / "truth").glob("*/meta.json")} == truths
    space = json.loads(out.read_text())
    assert space["merge"]["method"] == own and [r["units"] for r in space["rows"]] == [
        r["units"] for r in report["rows"]
    ]
    assert sum(r["replicate"] is not None for r in space["rows"]) == 2
    assert all(r["proxy"] > 0 and (r["replicate"] is None or r["replicate"] > 0) for r in space["rows"])
    one = next(r for r in space["rows"] if r["k"] == 1)  # by hand: the unit model against its truth, over truth - seed

    def flat(path):
        w = load_file(path)
        return torch.cat([w[n].float().reshape(-1) for n in sorted(w)])

    def weights(kind, **match):
        metas = [json.loads(p.read_text()) for p in (settings.store / kind).glob("*/meta.json")]
        (meta,) = [m for m in metas if all(m.get(k) == v for k, v in match.items())]
        return flat(settings.store / kind / meta["key"] / "model.safetensors")

    unit = weights("models", unit=one["units"][0])
    truth = weights("truth", units=one["units"], data_seed=settings.fidelity.data_seed)
    (base,) = [flat(p) for p in (settings.store / "seeds").glob("*/base.safetensors")]
    assert one["proxy"] == pytest.approx(float((unit - truth).norm() / (truth - base).norm()), rel=1e-5)
    two = next(r for r in space["rows"] if r["k"] == 2)  # the cosine between its two units' updates
    a, b = (weights("models", unit=u) - base for u in two["units"])
    assert one["cosine"] == 1.0 and two["cosine"] == pytest.approx(float(a @ b / (a.norm() * b.norm())), rel=1e-4)


def test_weighted_fidelity_follows_the_same_protocol(settings, corpus):
    """Weighted mixtures: independent truths, replicates, resolvable decisions, on every set and the objective."""
    toml = write_toml(settings, settings.store.parent / "f.toml")
    args = ["--config", str(toml), "fidelity", str(corpus), "--weighted", "--n", "6", "--replicates", "3"]
    res = CliRunner().invoke(app, [*args, "--json", "--no-mlflow"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["weighted"] and report["noise"]["n_replicates"] == 3 and len(report["rows"]) == 6
    for r in report["rows"]:
        assert r["shares"] and sum(r["shares"].values()) == pytest.approx(1.0, abs=1e-4) and r["truth"] != r["proxy"]
    assert_recomputed(report)
    objective = report["objective"]
    assert objective["objective"] == "macro" and {"resolvable_decision_accuracy", "spearman"} <= set(objective)
    # the macro objective is the geometric mean over sets: the same figures as the macro's
    assert objective["spearman"] == pytest.approx(report["macro"]["spearman"])
    assert objective["n_resolvable_pairs"] == report["macro"]["n_resolvable_pairs"]
    assert not (settings.store / "pools" / "corpus" / "fidelity-fixed.json").exists(), "weighted studies are reported"
