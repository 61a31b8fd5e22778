"""Merge methods behind one interface, each against tensors computed by hand; the registry's checks."""

import pytest
import torch
from safetensors.torch import save_file

from dataassess.errors import UserError
from dataassess.merge import METHODS, merge_spec, method_class


def write(path, **tensors):
    save_file({k: torch.tensor(v) for k, v in tensors.items()}, str(path))
    return path


@pytest.fixture()
def base_and_models(tmp_path):
    base = write(tmp_path / "base.safetensors", w=[1.0, 1.0, 1.0], b=[0.0, 0.0], idx=[0, 1])
    m1 = write(tmp_path / "m1.safetensors", w=[2.0, 1.0, 0.0], b=[1.0, 0.0], idx=[0, 1])
    m2 = write(tmp_path / "m2.safetensors", w=[1.0, 3.0, 1.0], b=[0.0, -2.0], idx=[0, 1])
    return base, [m1, m2]


def merged(name, paths, base, weights=None, **params):
    with method_class(name)() as method:
        return method.merge(paths, weights, base=base, params=params)


def test_linear_is_the_weighted_average_and_ignores_the_base(base_and_models):
    base, models = base_and_models
    out = merged("linear", models, base, [3.0, 1.0])
    assert torch.allclose(out["w"], torch.tensor([1.75, 1.5, 0.25]))  # 0.75 * m1 + 0.25 * m2
    assert torch.allclose(out["b"], torch.tensor([0.75, -0.5]))
    assert torch.equal(out["idx"], torch.tensor([0, 1]))


def test_task_arithmetic_adds_the_scaled_updates_to_the_base(base_and_models):
    base, models = base_and_models
    # uniform, scale 1: base + (m1 - base) + (m2 - base)
    out = merged("task_arithmetic", models, base)
    assert torch.allclose(out["w"], torch.tensor([2.0, 3.0, 0.0]))
    assert torch.allclose(out["b"], torch.tensor([1.0, -2.0]))
    # scale 0.5: halfway; scale 1/k is the linear average
    assert torch.allclose(merged("task_arithmetic", models, base, scale=0.5)["w"], torch.tensor([1.5, 2.0, 0.5]))
    # weights 3:1 -> k * w = 1.5 and 0.5: base + 1.5 (m1 - base) + 0.5 (m2 - base)
    out = merged("task_arithmetic", models, base, [3.0, 1.0])
    assert torch.allclose(out["w"], torch.tensor([2.5, 2.0, -0.5]))
    assert torch.equal(out["idx"], torch.tensor([0, 1]))


def test_a_method_that_merges_updates_needs_the_base(base_and_models):
    _, models = base_and_models
    with pytest.raises(ValueError, match="base"):
        merged("task_arithmetic", models, None)


def test_the_registry_names_methods_and_checks_their_parameters():
    assert {"linear", "task_arithmetic"} <= set(METHODS)
    spec = merge_spec("task_arithmetic")
    assert spec.params == (("scale", 1.0),) and spec.label == "task_arithmetic scale=1"
    assert merge_spec("task_arithmetic", {"scale": 2}).params == (("scale", 2.0),)
    assert merge_spec("linear").params == ()
    with pytest.raises(UserError, match="unknown merge method 'nope'; methods are .*linear"):
        merge_spec("nope")
    with pytest.raises(UserError, match="merge method 'linear' has no parameter density"):
        merge_spec("linear", {"density": 0.5})
