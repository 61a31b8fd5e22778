"""TIES against tensors computed by hand: trim, elect a sign, average the updates that agree."""

import pytest
import torch
from safetensors.torch import save_file

from dataassess.errors import UserError
from dataassess.merge import METHODS, merge_spec, method_class


def write(path, **tensors):
    save_file({k: torch.tensor(v) for k, v in tensors.items()}, str(path))
    return path


def test_ties_trims_elects_a_sign_and_averages_the_agreeing_updates(tmp_path):
    base = write(tmp_path / "base.safetensors", w=[0.0, 0.0, 0.0, 0.0], idx=[7])
    # updates: m1 = [4, -1, 2, 0.5], m2 = [-3, -2, 1, 0.1], m3 = [1, 3, -0.2, 0]
    m1 = write(tmp_path / "m1.safetensors", w=[4.0, -1.0, 2.0, 0.5], idx=[7])
    m2 = write(tmp_path / "m2.safetensors", w=[-3.0, -2.0, 1.0, 0.1], idx=[7])
    m3 = write(tmp_path / "m3.safetensors", w=[1.0, 3.0, -0.2, 0.0], idx=[7])
    with method_class("ties")() as method:
        out = method.merge([m1, m2, m3], base=base, params={"density": 0.5})
    # density 0.5 keeps the top 2 of 4 per model: m1 -> [4, 0, 2, 0], m2 -> [-3, -2, 0, 0], m3 -> [1, 3, 0, 0]
    # elected signs (sum): [+2 -> +, +1 -> +, +2 -> +, 0 -> none]
    # agreeing means: [(4 + 1) / 2, 3 / 1, 2 / 1, 0]
    assert torch.allclose(out["w"], torch.tensor([2.5, 3.0, 2.0, 0.0]))
    assert torch.equal(out["idx"], torch.tensor([7]))

    with method_class("ties")() as method:  # weights 2:1:1 and scale 0.5, everything kept
        out = method.merge([m1, m2, m3], [2.0, 1.0, 1.0], base=base, params={"density": 1.0, "scale": 0.5})
    # weighted sums: [0.5*4 - 0.25*3 + 0.25*1, -0.5 - 0.5 + 0.75, 1 + 0.25 - 0.05, 0.25 + 0.025] -> signs [+, -, +, +]
    # agreeing weighted means: [(2 + 0.25) / 0.75, (-0.5 - 0.5) / 0.75, (1 + 0.25) / 0.75, (0.25 + 0.025) / 0.75]
    expected = torch.tensor([2.25 / 0.75, -1.0 / 0.75, 1.25 / 0.75, 0.275 / 0.75]) * 0.5
    assert torch.allclose(out["w"], expected)


def test_ties_is_registered_with_its_parameters():
    assert "ties" in METHODS
    assert merge_spec("ties").params == (("density", 0.2), ("scale", 1.0))
    with pytest.raises(UserError, match="density must be in"):
        merge_spec("ties", {"density": 0.0})
