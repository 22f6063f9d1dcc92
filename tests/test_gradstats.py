"""Gradient statistics (``minifpn.tools.gradstats``), against hand-computed gradients.

Reference: for y = Σ (W x + b) with x = ones, ∂y/∂W = ones(out, in) and
∂y/∂b = ones(out), so the norms are √(out·in) and √out — no engine needed.
"""

import math
from collections import OrderedDict

import numpy as np
import pytest

import minifpn
from minifpn import nn
from minifpn.tools.gradstats import OutputGradients, gradient_norms


class TwoLevels(nn.Module):
    """Returns {"A": 2·x, "B": x ⊙ x}; a loss may use either map."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Linear(3, 3)

    def forward(self, x):
        h = self.scale(x)
        return OrderedDict(A=h * 2.0, B=h * h)


def _net():
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    for layer in net:
        layer.weight.data[...] = 1.0
        layer.bias.data[...] = 0.0
    return net


def test_norms_group_parameters_by_name_and_match_hand_gradients():
    net = _net()
    net(minifpn.Tensor(np.ones((1, 4), np.float32))).sum().backward()
    # y = Σ_j Σ_k W2[j,k] h_k, h = W1 x: ∂y/∂W2 = h = 4 (every entry), ∂y/∂b2 = 1,
    # ∂y/∂h = 2 per unit → ∂y/∂W1 = 2 (every entry), ∂y/∂b1 = 2.
    by_layer = gradient_norms(net, depth=1)
    assert list(by_layer) == ["0", "1"]
    assert by_layer["0"] == pytest.approx(math.sqrt(12 * 4 + 3 * 4))
    assert by_layer["1"] == pytest.approx(math.sqrt(6 * 16 + 2 * 1))
    by_tensor = gradient_norms(net, depth=2)
    assert by_tensor["0.weight"] == pytest.approx(math.sqrt(12 * 4))
    total = math.sqrt(sum(v ** 2 for v in by_layer.values()))
    assert total == pytest.approx(math.sqrt(sum(v ** 2 for v in by_tensor.values())))
    assert list(gradient_norms(net, depth=2, prefix="1.")) == ["1.weight", "1.bias"]


def test_unused_parameters_count_as_zero_and_depth_is_checked():
    net = _net()
    assert gradient_norms(net, depth=1) == OrderedDict([("0", 0.0), ("1", 0.0)])
    with pytest.raises(ValueError, match="depth"):
        gradient_norms(net, depth=0)


def test_output_gradients_keep_each_map_and_its_norm():
    module = TwoLevels()
    x = minifpn.Tensor(np.ones((2, 3), np.float32))
    with OutputGradients(module) as outputs:
        maps = module(x)
        (maps["A"] * 3.0).sum().backward()  # only A is used: ∂loss/∂A = 3 everywhere
    assert list(outputs.grads) == ["A", "B"]
    np.testing.assert_array_equal(outputs.grads["A"], np.full((2, 3), 3.0))
    assert outputs.grads["B"] is None
    norms = outputs.norms()
    assert norms["A"] == pytest.approx(3.0 * math.sqrt(6)) and norms["B"] == 0.0
    assert outputs.norms(per_element=True)["A"] == pytest.approx(3.0)
    module(x)  # the hook is gone after the with block: nothing new is captured
    assert outputs.outputs["A"] is not None and len(module._forward_hooks) == 0
