"""The norm-matched average against tensors computed by hand: the mean update's direction, the updates' mean length."""

import math

import pytest
import torch
from safetensors.torch import save_file

from dataassess.merge import METHODS, merge_spec, method_class


def write(path, **tensors):
    save_file({k: torch.tensor(v) for k, v in tensors.items()}, str(path))
    return path


@pytest.fixture
def base_and_models(tmp_path):
    base = write(tmp_path / "base.safetensors", w=[1.0, 1.0], b=[0.5], idx=[7])
    m1 = write(tmp_path / "m1.safetensors", w=[4.0, 1.0], b=[1.5], idx=[7])  # update w: [3, 0], b: [1]
    m2 = write(tmp_path / "m2.safetensors", w=[1.0, 5.0], b=[1.5], idx=[7])  # update w: [0, 4], b: [1]
    return base, m1, m2


def merged(paths, base, weights=None):
    with method_class("norm_matched")() as method:
        return method.merge(paths, weights, base=base)


def test_the_mean_update_is_stretched_per_tensor_to_the_updates_mean_length(base_and_models):
    base, m1, m2 = base_and_models
    out = merged([m1, m2], base)
    # w: mean update [1.5, 2] has length 2.5, the updates' mean length is (3 + 4) / 2 = 3.5: scaled by 1.4
    assert torch.allclose(out["w"], torch.tensor([1.0 + 2.1, 1.0 + 2.8]))
    # b: both updates are [1], so the mean is already as long as they are: the linear average
    assert torch.allclose(out["b"], torch.tensor([1.5]))
    assert torch.equal(out["idx"], torch.tensor([7]))

    out = merged([m1, m2], base, [3.0, 1.0])  # weights 0.75, 0.25
    # mean update [2.25, 1.0], its length sqrt(2.25^2 + 1); the updates' weighted mean length 0.75 * 3 + 0.25 * 4
    expected = torch.tensor([2.25, 1.0]) * (3.25 / math.sqrt(2.25**2 + 1.0))
    assert torch.allclose(out["w"], torch.tensor([1.0, 1.0]) + expected)


def test_one_unit_is_its_own_model_and_opposite_updates_cancel(base_and_models, tmp_path):
    base, m1, _ = base_and_models
    assert torch.allclose(merged([m1], base)["w"], torch.tensor([4.0, 1.0]))
    opposite = write(tmp_path / "m3.safetensors", w=[-2.0, 1.0], b=[-0.5], idx=[7])  # update w: [-3, 0], b: [-1]
    out = merged([m1, opposite], base)
    assert torch.allclose(out["w"], torch.tensor([1.0, 1.0])) and torch.allclose(out["b"], torch.tensor([0.5]))


def test_norm_matched_is_registered_and_needs_the_seed(base_and_models):
    assert "norm_matched" in METHODS and method_class("norm_matched").uses_base
    assert merge_spec("norm_matched").params == ()
    _, m1, m2 = base_and_models
    with pytest.raises(ValueError, match="pass base="):
        merged([m1, m2], None)
