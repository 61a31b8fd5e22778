import logging

import pytest
import torch
import transformers
from safetensors import safe_open

from dataassess.config import TrainConfig
from dataassess.corpus import discover
from dataassess.steps import Steps, check_training, finished_unit_model, unit_model_key
from dataassess.store import Store, recorded_digest, sha256_file
from dataassess.train import linear_decay, train_lm
from dataassess.units import resample, unit_tokens
from tests.conftest import prepare_pool


def test_resample_gives_exact_length():
    chunk = torch.arange(10, dtype=torch.int32)
    assert resample(chunk, 25).tolist() == (list(range(10)) * 3)[:25]
    assert resample(chunk, 4).tolist() == [0, 1, 2, 3]


def test_split_and_upsampled_units_hold_equal_token_counts(settings, corpus):
    pool = prepare_pool(corpus, settings)
    by_part = {}
    for u in pool.units:
        by_part.setdefault(u.partition, []).append(u)
        assert u.tokens == settings.units.tokens
        assert unit_tokens(Store(settings.store), u).numel() == settings.units.tokens
        assert abs(u.repeat - u.tokens / u.source_tokens) < 1e-3
    assert len(by_part["scripture"]) > 1, "the large partition is split"
    assert by_part["satire"][0].repeat > 1, "the small partition is upsampled"
    # distinct slices of a split partition are different text
    parts = by_part["scripture"]
    assert not torch.equal(unit_tokens(Store(settings.store), parts[0]), unit_tokens(Store(settings.store), parts[1]))
    # deterministic: cutting again gives the same digests and tokens
    again = prepare_pool(corpus, settings)
    assert [u.digest for u in again.units] == [u.digest for u in pool.units]


def test_heldout_documents_are_never_trained_on(settings, corpus):
    pool = prepare_pool(corpus, settings)
    tok = pool.seed.load_tokenizer()
    trained_text = "".join(tok.decode(unit_tokens(Store(settings.store), u).tolist()) for u in pool.units)
    partitions, _ = discover(corpus)
    held = [d for p in partitions for d in p.split(settings.corpus.heldout_fraction)[1]]
    assert held, "the fixture corpus must hold some documents out"
    for doc in held:
        probe = doc.text.strip()[:200]
        assert probe not in trained_text
    # and they are what the default evaluation sets are made of
    assert set(pool.eval_sets) <= {d.domain for d in held}


def test_unit_training_writes_safetensors_and_metadata_once(settings, corpus):
    pool = prepare_pool(corpus, settings)
    unit = pool.units[0]
    steps = Steps(settings, pool.seed, Store(settings.store))
    model = steps.train(unit)
    assert (model.unit_digest, model.seed_digest, model.train_config_hash) == (
        unit.digest,
        pool.seed.digest,
        settings.train.digest(),
    )
    assert model.tokens == settings.units.tokens and model.final_loss > 0 and model.wall_s > 0
    weights = settings.store / "models" / model.key / "model.safetensors"
    assert recorded_digest(weights) == model.weights_digest == sha256_file(weights)  # checked before every reuse
    with safe_open(str(weights), framework="pt") as f:
        names = set(f.keys())
    assert len(names & {"transformer.wte.weight", "lm_head.weight"}) == 1  # tied, stored once
    # the weights moved away from the seed, and a second call trains nothing
    seed_w = pool.seed.load_model().state_dict()["transformer.h.0.mlp.c_fc.weight"]
    with safe_open(str(weights), framework="pt") as f:
        assert not torch.allclose(f.get_tensor("transformer.h.0.mlp.c_fc.weight"), seed_w)
    mtime = weights.stat().st_mtime_ns
    assert steps.train(unit) == model
    assert weights.stat().st_mtime_ns == mtime
    assert finished_unit_model(Store(settings.store), unit_model_key(unit, pool.seed, settings)) == model
    assert (
        str(settings.store) not in (settings.store / "models" / model.key / "meta.json").read_text()
    )  # keys, never paths


def test_training_is_deterministic_for_a_fixed_seed(settings, corpus, tmp_path):
    pool = prepare_pool(corpus, settings)
    a = Steps(settings, pool.seed, Store(settings.store)).train(pool.units[0])
    other = settings.model_copy(update={"store": tmp_path / "other"})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "seeds").symlink_to(settings.store / "seeds")
    pool2 = prepare_pool(corpus, other)
    b = Steps(other, pool2.seed, Store(other.store)).train(pool2.units[0])
    assert a.final_loss == b.final_loss


def test_a_partition_below_the_minimum_token_count_is_quarantined(settings, corpus):
    from tests.conftest import write_jsonl

    write_jsonl(corpus / "tiny" / "a.jsonl", [{"text": "Just a few words here."}] * 3)
    pool = prepare_pool(corpus, settings)
    assert "tiny" not in {u.partition for u in pool.units}
    assert {u.partition for u in pool.units} == {"scripture", "satire", "jargon", "drama"}
    err = next(e for e in pool.quarantined if "partition 'tiny'" in e)
    assert "too small" in err and str(settings.corpus.min_tokens) in err and str(corpus / "tiny") in err


def test_training_runs_on_the_process_thread_count_whatever_a_scoring_worker_set():
    """A scoring worker's set_num_threads(1) lowers the count other threads see; the thread count changes a trained
    model's bits, so training sets the process's count itself."""
    import threading

    from dataassess.train import DEFAULT_THREADS, cpu_threads

    before = torch.get_num_threads()
    worker = threading.Thread(target=torch.set_num_threads, args=(1,))
    worker.start()
    worker.join()
    try:
        with cpu_threads(None):
            assert torch.get_num_threads() == DEFAULT_THREADS
        with cpu_threads(1):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_learning_rate_left_unset_is_5e_4_for_a_seed_built_here_and_1e_4_for_an_imported_one():
    assert TrainConfig().for_seed(imported=False).lr == 5e-4
    assert TrainConfig().for_seed(imported=True).lr == 1e-4
    assert TrainConfig(lr=5e-5).for_seed(imported=False).lr == 5e-5 == TrainConfig(lr=5e-5).for_seed(imported=True).lr


def test_a_constant_rate_keys_models_as_before_the_schedule_existed_and_a_linear_one_keys_its_own():
    assert TrainConfig().digest() == "eb01d9437a69a74f"  # the key of version 5e25715, before train.schedule
    assert TrainConfig(schedule="linear").digest() != TrainConfig().digest()


def test_a_linear_schedule_trains_at_a_rate_falling_by_equal_steps_and_a_constant_one_keeps_it():
    assert [linear_decay(1e-3)(step, 4) for step in range(4)] == pytest.approx([1e-3, 0.75e-3, 0.5e-3, 0.25e-3])
    sequences = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))

    def trained(schedule, lr_at=None):
        torch.manual_seed(0)
        config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_layer=1, n_embd=16, n_head=2)
        model = transformers.GPT2LMHeadModel(config)
        cfg = TrainConfig(lr=1e-3, schedule=schedule, seq_len=16, batch_tokens=32, micro_batch=2)
        train_lm(model, sequences, cfg, 4 * 32, torch.device("cpu"), lr_at=lr_at, progress=False)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    linear = trained("linear")
    assert torch.equal(linear, trained("constant", lr_at=linear_decay(1e-3)))  # the schedule is that rate
    assert not torch.equal(linear, trained("constant"))


def test_check_training_names_a_diverged_and_an_idle_unit_training():
    assert check_training("unit a", 4.0, 3.5) is None
    assert "diverged" in check_training("unit a", 4.0, 4.2) and "lower train.lr" in check_training("unit a", 4.0, 4.2)
    assert "diverged" in check_training("unit a", 4.0, float("nan"))
    idle = check_training("unit a", 4.0, 3.999)  # 0.025%
    assert "less than 0.1%" in idle and "raise train.lr" in idle and idle.startswith("unit a:")
    assert check_training("unit a", 4.0, 3.995) is None  # 0.125%


@pytest.mark.parametrize(("lr", "said"), [(1e-9, "did almost nothing"), (30.0, "diverged")])
def test_a_unit_training_that_does_nothing_or_diverges_is_reported(settings, corpus, caplog, lr, said):
    bad = settings.model_copy(update={"train": settings.train.model_copy(update={"lr": lr})})
    pool = prepare_pool(corpus, bad)
    caplog.clear()  # preparing warns of the fixture's drama (no document held out); only training's count here
    with caplog.at_level(logging.WARNING, logger="dataassess"):
        model = Steps(bad, pool.seed, Store(bad.store)).train(pool.units[0])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and said in warnings[0] and f"unit {pool.units[0].name}:" in warnings[0], warnings
    assert model.seed_loss is not None and model.end_loss is not None
