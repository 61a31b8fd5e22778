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
