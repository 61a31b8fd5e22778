"""What the store trusts: a file is reused only when its recorded digest, or its metadata's, says it is intact."""

import pytest

from dataassess.files import digest_record, intact, record_digest, sha256_file


def test_a_file_whose_digest_record_is_missing_is_unverified(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights as written")
    sha = record_digest(path)
    assert intact(path)
    digest_record(path).unlink()
    assert intact(path, expected_sha256=sha), "the metadata's digest verifies it"
    assert digest_record(path).exists(), "and its record is written again"

    digest_record(path).unlink()
    path.write_bytes(b"weights changed behind the store's back")
    assert not intact(path, expected_sha256=sha) and not path.exists(), "a mismatch is removed, to be rebuilt"

    path.write_bytes(b"weights of unknown origin")
    assert not intact(path) and not path.exists(), "no record and no metadata digest: rebuilt, not trusted"


def test_a_recorded_file_that_changed_is_removed_with_its_record(tmp_path):
    path = tmp_path / "tokens.safetensors"
    path.write_bytes(b"abc")
    record_digest(path)
    path.write_bytes(b"abd")
    assert sha256_file(path) != digest_record(path).read_text().split()[1]
    assert not intact(path) and not path.exists() and not digest_record(path).exists()


def test_a_saved_state_has_the_same_bytes_every_time_and_more_metadata_keys_are_refused(tmp_path):
    import torch

    from dataassess.weights import save_state

    state = {"b": torch.arange(6.0).view(2, 3), "a": torch.ones(4)}
    digests = {
        save_state(state, tmp_path / f"m{i}.safetensors", {"mixture": "x.u0,y.u0 merged by linear"}) for i in range(20)
    }
    assert len(digests) == 1, "a header's bytes do not depend on the write"
    with pytest.raises(ValueError, match="one metadata key"):
        save_state(state, tmp_path / "two.safetensors", {"units": "x.u0", "merge": "linear"})
    assert not (tmp_path / "two.safetensors").exists()


def test_a_damaged_pool_record_is_one_clear_error_and_is_left_as_it_was(tmp_path):
    from dataassess.errors import UserError
    from dataassess.store import Store

    store = Store(tmp_path)
    reads = {
        tmp_path / "pools" / "p" / "eval_sets.json": lambda: store.pinned_eval_sets("p"),
        tmp_path / "pools" / "p" / "optimize.json": lambda: store.optimization("p"),
        tmp_path / "pools" / "p" / "fidelity-fixed.json": lambda: store.fidelity("p", "fixed"),
        tmp_path / "pools" / "p" / "calibration.json": lambda: store.calibration("p"),
        tmp_path / "rankings" / "p" / "latest.json": lambda: store.latest_ranking("p"),
    }
    for path, read in reads.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        for damage in (b'{"cut off', b"\xff\xfe not text", b"[1, 2]"):  # cut, not text, not the record
            path.write_bytes(damage)
            with pytest.raises(UserError, match=f"^store record {path} is damaged"):
                read()
            assert path.read_bytes() == damage, "nothing is overwritten"


def test_model_metadata_that_is_not_json_means_the_model_is_trained_again(tmp_path, caplog):
    import logging

    from dataassess.store import Store

    store = Store(tmp_path)
    weights, meta = store.weights("k"), store.meta("k")
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights as written")
    record_digest(weights)
    meta.write_text('{"weights_digest": "cut off')
    with caplog.at_level(logging.WARNING, logger="dataassess"):
        assert store.finished("k") is None
    assert not meta.exists() and [r.getMessage() for r in caplog.records] == [
        f"store: {meta} is not the metadata written there: training its model again"
    ]


def test_a_damaged_evaluation_set_is_written_again_when_built_and_named_when_only_read(tmp_path):
    from dataassess.errors import UserError
    from dataassess.evalsets import EvalSets
    from dataassess.store import Store
    from dataassess.types import EvalSet

    store = Store(tmp_path)
    es = EvalSet("prose", "d" * 24, [([1, 2, 3, 4], 1)], 3, 12, 1)
    path = store.eval_set(es.digest)
    path.parent.mkdir(parents=True)
    path.write_text('{"cut off')
    with pytest.raises(UserError, match=f"^store record {path} is damaged"):
        EvalSets(store).load(es.digest)
    assert EvalSets(store).save(es) == es.digest
    assert EvalSets(store).load(es.digest) == es, "built again, it is written again"
