import torch
from safetensors import safe_open

from dataassess.corpus import discover
from dataassess.pipeline import prepare_pool, train_unit, trained_meta, unit_model_key
from dataassess.units import resample


def test_resample_gives_exact_length():
    chunk = torch.arange(10, dtype=torch.int32)
    assert resample(chunk, 25).tolist() == (list(range(10)) * 3)[:25]
    assert resample(chunk, 4).tolist() == [0, 1, 2, 3]


def test_split_and_upsampled_units_hold_equal_token_counts(settings, corpus):
    pool = prepare_pool(corpus, settings, progress=False)
    by_part = {}
    for u in pool.units:
        by_part.setdefault(u.partition, []).append(u)
        assert u.tokens == settings.units.tokens
        assert u.load_tokens().numel() == settings.units.tokens
        assert abs(u.repeat - u.tokens / u.source_tokens) < 1e-3
    assert len(by_part["scripture"]) > 1, "the large partition is split"
    assert by_part["satire"][0].repeat > 1, "the small partition is upsampled"
    # distinct slices of a split partition are different text
    parts = by_part["scripture"]
    assert not torch.equal(parts[0].load_tokens(), parts[1].load_tokens())
    # deterministic: cutting again gives the same digests and tokens
    again = prepare_pool(corpus, settings, progress=False)
    assert [u.digest for u in again.units] == [u.digest for u in pool.units]


def test_heldout_documents_are_never_trained_on(settings, corpus):
    pool = prepare_pool(corpus, settings, progress=False)
    tok = pool.seed.load_tokenizer()
    trained_text = "".join(tok.decode(u.load_tokens().tolist()) for u in pool.units)
    partitions, _ = discover(corpus)
    held = [d for p in partitions for d in p.split(settings.corpus.heldout_fraction)[1]]
    assert held, "the fixture corpus must hold some documents out"
    for doc in held:
        probe = doc.text.strip()[:200]
        assert probe not in trained_text
    # and they are what the default evaluation sets are made of
    assert set(pool.eval_sets) <= {d.domain for d in held}


def test_unit_training_writes_safetensors_and_metadata_once(settings, corpus):
    pool = prepare_pool(corpus, settings, progress=False)
    unit = pool.units[0]
    meta = train_unit(unit, pool.seed, settings, progress=False)
    for key in ("unit_digest", "seed_digest", "train_config_hash", "tokens", "final_loss", "wall_s"):
        assert key in meta
    assert meta["tokens"] == settings.units.tokens
    with safe_open(meta["weights"], framework="pt") as f:
        assert f.metadata()["unit_digest"] == unit.digest
        names = set(f.keys())
    assert len(names & {"transformer.wte.weight", "lm_head.weight"}) == 1  # tied, stored once
    # the weights moved away from the seed, and a second call trains nothing
    seed_w = pool.seed.load_model().state_dict()["transformer.h.0.mlp.c_fc.weight"]
    with safe_open(meta["weights"], framework="pt") as f:
        assert not torch.allclose(f.get_tensor("transformer.h.0.mlp.c_fc.weight"), seed_w)
    mtime = (settings.store / "models" / meta["key"] / "model.safetensors").stat().st_mtime_ns
    assert train_unit(unit, pool.seed, settings, progress=False) == meta
    assert (settings.store / "models" / meta["key"] / "model.safetensors").stat().st_mtime_ns == mtime
    assert trained_meta(settings, unit_model_key(unit, pool.seed, settings)) == meta


def test_training_is_deterministic_for_a_fixed_seed(settings, corpus, tmp_path):
    pool = prepare_pool(corpus, settings, progress=False)
    a = train_unit(pool.units[0], pool.seed, settings, progress=False)
    other = settings.model_copy(update={"store": tmp_path / "other"})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "seeds").symlink_to(settings.store / "seeds")
    pool2 = prepare_pool(corpus, other, progress=False)
    b = train_unit(pool2.units[0], pool2.seed, other, progress=False)
    assert a["final_loss"] == b["final_loss"]


def test_a_partition_below_the_minimum_token_count_is_quarantined(settings, corpus):
    from tests.conftest import write_jsonl

    write_jsonl(corpus / "tiny" / "a.jsonl", [{"text": "Just a few words here."}] * 3)
    pool = prepare_pool(corpus, settings, progress=False)
    assert "tiny" not in {u.partition for u in pool.units}
    assert {u.partition for u in pool.units} == {"scripture", "satire", "jargon", "drama"}
    err = next(e for e in pool.rejected if e.partition == "tiny")
    assert "too small" in str(err) and str(settings.corpus.min_tokens) in str(err) and str(corpus / "tiny") in str(err)
