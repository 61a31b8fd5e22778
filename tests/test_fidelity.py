import json
import math
from collections import Counter

import pytest
import torch
from typer.testing import CliRunner

from dataassess.fidelity import decision_accuracy, figures, sample_mixtures, top_k_agreement, train_truth, union_sequences
from dataassess.pipeline import prepare_pool
from dataassess.train import to_sequences
from flows.cli import app
from tests.conftest import write_toml


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
    mixes = sample_mixtures(units, 20, 3)
    assert len(mixes) == len(set(mixes)) == 20
    sizes = Counter(len(m) for m in mixes)
    assert set(sizes) == {2, 3} and abs(sizes[2] - sizes[3]) <= 1
    assert sample_mixtures(units, 20, 3) == mixes  # deterministic
    assert len(sample_mixtures(["a", "b", "c"], 20, 2)) == 3  # all that exist


def test_ground_truth_is_trained_on_the_exact_union(settings, corpus):
    pool = prepare_pool(corpus, settings, progress=False)
    units = pool.units[:2]
    seqs = union_sequences(units, settings.train.seq_len)
    expected = torch.cat([to_sequences(u.load_tokens(), settings.train.seq_len) for u in units])
    assert torch.equal(seqs, expected)
    assert len(seqs) * settings.train.seq_len == 2 * settings.units.tokens
    meta = train_truth(units, pool.seed, settings, progress=False)
    assert meta["tokens"] == 2 * settings.units.tokens  # k x the unit budget: one pass over the union
    assert meta["unit_digests"] == [u.digest for u in units]
    assert train_truth(list(reversed(units)), pool.seed, settings, progress=False)["key"] == meta["key"]  # cached


def test_fidelity_cli_prints_the_figures_as_json(settings, corpus):
    toml = write_toml(settings, settings.store.parent / "f.toml")
    res = CliRunner().invoke(app, ["--config", str(toml), "fidelity", "--corpus", str(corpus), "--n", "4", "--k-max", "2", "--json", "--no-mlflow"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert set(report["eval_sets"]) and "macro" in report
    for figs in [*report["eval_sets"].values(), report["macro"]]:
        assert {"pearson", "spearman", "kendall", "decision_accuracy", "baseline_pearson", "n_mixtures"} <= set(figs)
        assert figs["n_mixtures"] == 4
    latest = json.loads((settings.store / "fidelity" / "latest.json").read_text())
    rows = latest["rows"]
    name = sorted(report["eval_sets"])[0]
    proxy, truth = [r["proxy"][name] for r in rows], [r["truth"][name] for r in rows]
    r = report["eval_sets"][name]["pearson"]
    mean_p, mean_t = sum(proxy) / 4, sum(truth) / 4
    cov = sum((p - mean_p) * (t - mean_t) for p, t in zip(proxy, truth))
    var = math.sqrt(sum((p - mean_p) ** 2 for p in proxy) * sum((t - mean_t) ** 2 for t in truth))
    assert r == pytest.approx(cov / var)
