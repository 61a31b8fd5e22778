"""pipeline.run's options and cache paths, each checked against a value computed another way."""

import hashlib
import json
import logging
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from dataassess.errors import UserError
from dataassess.evalsets import EvalSets
from dataassess.merge import linear_merge
from dataassess.scoring import score_model
from dataassess.store import Store
from flows.cli import app
from tests.conftest import demo_docs, latest, prepare_pool, run_pipeline, write_jsonl, write_toml


def with_rank(settings, **rank):
    return settings.model_copy(update={"rank": settings.rank.model_copy(update=rank)})


def test_held_out_eval_sets_are_pinned_per_pool_until_refreshed(settings, corpus, caplog):
    def waiting():  # the warnings that name a set the pinned ones leave out
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluation set not used")]

    first = run_pipeline(corpus, settings, progress=False)
    write_jsonl(corpus / "wisdom" / "a.jsonl", [{**d, "domain": "wisdom"} for d in demo_docs("scripture-wisdom", 40)])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dataassess"):
        second = run_pipeline(corpus, settings, progress=False)
    assert second.pool.eval_sets == first.pool.eval_sets  # the new partition's held-out documents wait
    assert "wisdom" not in second.pool.eval_sets
    assert waiting() == [
        "evaluation set not used: 'wisdom' holds documents out, but pool 'corpus' pinned its evaluation sets before "
        "they arrived: `rank` or `intake` with --refresh-eval adds it (and scores every mixture again)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dataassess"):
        refreshed = run_pipeline(corpus, settings, refresh_eval=True, progress=False)
    assert "wisdom" in refreshed.pool.eval_sets and not waiting()
    assert refreshed.counts["scored"] == refreshed.counts["mixtures"]  # new sets: every mixture re-scored
    other_pool = run_pipeline(corpus, settings, pool="other", progress=False)
    assert other_pool.pool.eval_sets == refreshed.pool.eval_sets  # a new pool pins what is there now


def test_a_domain_with_no_held_out_document_is_named_in_one_warning(settings, corpus, caplog):
    def held(fraction):  # the domains with a document whose sha256 falls below the fraction, computed here
        docs = [json.loads(line) for f in corpus.glob("*/a.jsonl") for line in f.read_text().splitlines()]
        return {
            d["domain"]
            for d in docs
            if int(hashlib.sha256(d["text"].encode()).hexdigest()[:16], 16) < fraction * 16**16
        }

    assert held(0.1) == {"jargon", "satire", "scripture"} and held(0.5) >= {"drama"}, "the fixture's premise"
    with caplog.at_level(logging.WARNING, logger="dataassess"), prepare_pool(corpus, settings) as pool:
        assert set(pool.eval_sets) == held(0.1)
    said = [r.getMessage() for r in caplog.records if "held out" in r.getMessage()]
    assert said == [
        "evaluation set skipped: no document of 'drama' is held out (3 in all, corpus.heldout_fraction = 0.1): "
        "raise the fraction or pass --eval-sets"
    ]
    caplog.clear()
    half = settings.model_copy(update={"corpus": settings.corpus.model_copy(update={"heldout_fraction": 0.5})})
    with caplog.at_level(logging.WARNING, logger="dataassess"), prepare_pool(corpus, half, pool="half") as pool:
        assert set(pool.eval_sets) == held(0.5)
    assert not [r for r in caplog.records if "held out" in r.getMessage()]
    for other in ("jargon", "satire", "scripture"):  # quarantined, they leave drama alone: the error says why
        (corpus / other / "empty.txt").write_text("")
    with pytest.raises(UserError, match="pass --eval-sets; quarantined: partition 'jargon': .*empty.txt: empty file"):
        prepare_pool(corpus, settings, pool="drama")
    for other in ("jargon", "satire", "scripture"):  # drama alone: nothing to evaluate on
        shutil.rmtree(corpus / other)
    with pytest.raises(UserError, match="^" + re.escape(f"corpus '{corpus}': no evaluation sets: hold out documents")):
        prepare_pool(corpus, settings, pool="drama")


def test_token_weighting_scores_the_merge_weighted_by_distinct_tokens(settings, corpus):
    s = with_rank(settings, weighting="tokens", mixtures=[["satire.u0", "scripture.u0"]])
    s = s.model_copy(update={"merge": s.merge.model_copy(update={"method": "linear"})})  # an average by hand
    result = run_pipeline(corpus, s, progress=False)
    models = result.models
    a, b = models["satire.u0"], models["scripture.u0"]
    assert a.source_tokens != b.source_tokens, "the fixture's partitions differ in size"
    # by hand: the weighted average of the two state dicts, loaded into the seed's model
    sa, sb = (load_file(str(settings.store / "models" / m.key / "model.safetensors")) for m in (a, b))
    wa, wb = (
        a.source_tokens / (a.source_tokens + b.source_tokens),
        b.source_tokens / (a.source_tokens + b.source_tokens),
    )
    model = result.pool.seed.load_model()
    model.load_state_dict({k: wa * sa[k] + wb * sb[k] for k in sa}, strict=False)
    model.tie_weights()
    evalsets = EvalSets(Store(settings.store))
    (row,) = result.ranking
    for name, digest in result.pool.eval_sets.items():
        expected = score_model(model, evalsets.load(digest), 16, "cpu").perplexity
        assert row.scores[name] == pytest.approx(expected, rel=1e-4)
    uniform = run_pipeline(corpus, with_rank(s, weighting="uniform"), progress=False).ranking[0]
    assert uniform.scores != row.scores


def test_ranking_by_one_eval_set_and_explicit_mixtures(settings, corpus):
    result = run_pipeline(corpus, settings, progress=False)
    name = sorted(result.pool.eval_sets)[0]
    by_set = run_pipeline(corpus, with_rank(settings, by=name), progress=False)
    assert [r.scores[name] for r in by_set.ranking] == sorted(r.scores[name] for r in result.ranking)
    assert by_set.counts["scored"] == 0  # re-sorted from the cache
    chosen = [["jargon.u0", "satire.u0"], ["drama.u0"]]
    explicit = run_pipeline(corpus, with_rank(settings, mixtures=chosen), progress=False)
    assert sorted(r.units for r in explicit.ranking) == sorted(chosen)


def test_a_bad_rank_by_fails_before_any_training(settings, corpus):
    with pytest.raises(ValueError, match="cannot rank by 'nope'"):
        run_pipeline(corpus, with_rank(settings, by="nope"), progress=False)
    assert not (settings.store / "models").exists()


def test_rank_change_counts_only_moves_among_mixtures_ranked_both_times(settings, corpus):
    k1 = with_rank(settings, k_max=1)
    singles = [tuple(r.units) for r in run_pipeline(corpus, k1, progress=False).ranking]
    after = run_pipeline(corpus, settings, progress=False).ranking  # pairs join the singles
    pushed_down = [r for r in after if r.k == 1 and r.rank != singles.index(tuple(r.units)) + 1]
    assert pushed_down, "some pair outranks a single"
    assert all(r.rank_change == 0 for r in after if r.k == 1), "pushed down only by newcomers: not moved"
    assert all(r.rank_change is None for r in after if r.k == 2)
    snapshot = latest(settings)
    changes = snapshot["changes"]
    assert (
        sorted(map(tuple, changes["new"])) == sorted(tuple(r.units) for r in after if r.k == 2)
        and changes["moved"] == []
    )
    assert changes["new_best"] == (tuple(after[0].units) != singles[0])

    previous = [tuple(r.units) for r in after]
    by_one_set = with_rank(settings, by=sorted(after[0].scores)[0])
    resorted = run_pipeline(corpus, by_one_set, progress=False).ranking
    for place, row in enumerate(resorted):
        assert row.rank_change == previous.index(tuple(row.units)) - place  # every mixture was ranked both times
    assert any(r.rank_change for r in resorted), "one set orders the mixtures differently from macro"
    assert sorted(map(tuple, latest(settings)["changes"]["moved"])) == sorted(
        tuple(r.units) for r in resorted if r.rank_change
    )


def test_lost_weights_or_metadata_retrain_that_unit_once(settings, corpus):
    first = run_pipeline(corpus, with_rank(settings, k_max=1), progress=False)
    store = Store(settings.store)
    gone_weights, gone_meta = first.models["jargon.u0"], first.models["satire.u0"]
    store.weights(gone_weights.key).unlink()
    store.meta(gone_meta.key).unlink()
    second = run_pipeline(corpus, with_rank(settings, k_max=1), progress=False)
    assert sorted(second.trained) == ["jargon.u0", "satire.u0"]
    for unit in ("jargon.u0", "satire.u0"):  # the same model again, up to float summation order
        assert second.models[unit].key == first.models[unit].key
        assert second.models[unit].final_loss == pytest.approx(first.models[unit].final_loss, rel=1e-4)
    assert run_pipeline(corpus, with_rank(settings, k_max=1), progress=False).trained == []


def test_a_truncated_weights_file_is_an_error_not_a_model(tmp_path):
    paths = [tmp_path / f"{i}.safetensors" for i in range(2)]
    for i, p in enumerate(paths):
        save_file({"w": torch.full((1000,), float(i))}, str(p))
    with open(paths[1], "r+b") as f:
        f.truncate(paths[1].stat().st_size - 100)
    with pytest.raises(ValueError, match="truncated"):
        linear_merge(paths)


def test_add_partition_validates_then_copies(settings, corpus, tmp_path):
    toml = write_toml(settings, tmp_path / "c.toml")
    incoming = tmp_path / "incoming" / "wisdom"
    write_jsonl(incoming / "a.jsonl", demo_docs("scripture-wisdom", 5))
    runner = CliRunner()
    res = runner.invoke(app, ["--config", str(toml), "add-partition", str(incoming), "--corpus", str(corpus)])
    assert res.exit_code == 0, res.output
    assert "no `dataassess serve` runs for this store" in res.output
    assert (corpus / "wisdom" / "a.jsonl").read_bytes() == (incoming / "a.jsonl").read_bytes()
    res = runner.invoke(app, ["--config", str(toml), "add-partition", str(incoming), "--corpus", str(corpus)])
    assert res.exit_code == 2 and "already exists" in res.output
    bad = tmp_path / "incoming" / "bad"
    bad.mkdir()
    (bad / "a.txt").write_bytes(b"\x00\x01binary")
    res = runner.invoke(app, ["--config", str(toml), "add-partition", str(bad), "--corpus", str(corpus)])
    assert res.exit_code == 2 and "binary" in res.output and not (corpus / "bad").exists()


def test_cli_rank_and_score_agree_with_the_pipeline(settings, corpus, tmp_path):
    toml = write_toml(settings, tmp_path / "c.toml")
    runner = CliRunner()
    res = runner.invoke(app, ["--config", str(toml), "rank", str(corpus), "--k-max", "1"])
    assert res.exit_code == 0, res.output
    snapshot = latest(settings)
    res = runner.invoke(app, ["--config", str(toml), "score", str(corpus), "-m", "jargon.u0"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout[res.stdout.index("{") :])
    assert row["scores"] == next(r["scores"] for r in snapshot["ranking"] if r["units"] == ["jargon.u0"])
    res = runner.invoke(app, ["--config", str(toml), "units", str(corpus)])  # each set's size, as stored
    stored = {n: json.loads(Store(settings.store).eval_set(d).read_text()) for n, d in snapshot["eval_sets"].items()}
    assert res.exit_code == 0 and res.stdout.splitlines()[-1] == "evaluation sets: " + ", ".join(
        f"{n} ({s['tokens']:,} tokens, {s['documents']} documents)" for n, s in stored.items()
    )
    assert all(s["documents"] >= 1 and s["tokens"] == sum(len(w) - f for w, f in s["windows"]) for s in stored.values())
