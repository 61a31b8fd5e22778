import json
from collections import Counter

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from dataassess.fidelity import decision_accuracy, figures, sample_mixtures, top_k_agreement, train_truth, union_sequences
from dataassess.pipeline import prepare
from dataassess.steps import Steps
from dataassess.store import Store
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
    inputs = prepare(corpus, settings, progress=False)
    store, units, length = Store(settings.store), inputs.units[:2], settings.train.seq_len
    seqs = union_sequences(store, units, length)
    # by hand: every whole window of each unit's stored tokens, each exactly once
    raw = [load_file(str(settings.store / "units" / u.digest[:24] / "tokens.safetensors"))["tokens"].tolist() for u in units]
    windows = [tuple(r[i:i + length]) for r in raw for i in range(0, len(r) - length + 1, length)]
    assert sorted(map(tuple, seqs.tolist())) == sorted(windows)
    assert len(seqs) * length == 2 * settings.units.tokens
    with Steps(settings, inputs.seed) as steps:
        meta = train_truth(steps, units)
        assert meta["tokens"] == 2 * settings.units.tokens  # k x the unit budget: one pass over the union
        assert meta["unit_digests"] == [u.digest for u in units]
        assert train_truth(steps, list(reversed(units)))["key"] == meta["key"]  # cached


def test_fidelity_cli_prints_the_figures_as_json(settings, corpus):
    toml = write_toml(settings, settings.store.parent / "f.toml")
    res = CliRunner().invoke(app, ["--config", str(toml), "fidelity", "--corpus", str(corpus), "--n", "4", "--k-max", "2", "--json", "--no-mlflow"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert set(report["eval_sets"]) and "macro" in report
    for figs in [*report["eval_sets"].values(), report["macro"]]:
        assert {"pearson", "spearman", "kendall", "decision_accuracy", "baseline_pearson", "n_mixtures"} <= set(figs)
        assert figs["n_mixtures"] == 4
        assert all(v is None or -1 <= v <= 1 for k, v in figs.items() if k in ("pearson", "spearman", "kendall"))
    latest = json.loads((settings.store / "fidelity" / "latest.json").read_text())
    assert len(latest["rows"]) == 4 and all(set(r["truth"]) == set(report["eval_sets"]) for r in latest["rows"])
