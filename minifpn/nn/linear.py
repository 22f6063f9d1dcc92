"""Layers that map features without looking at space: ``Linear``, ``Identity``, ``Flatten``."""

from __future__ import annotations

import numpy as np

from minifpn import backend
from minifpn.functional import flatten, linear
from minifpn.nn import init
from minifpn.nn.module import Module, Parameter


class Linear(Module):
    """Fully-connected layer ``y = x @ weightᵀ + bias`` (``torch.nn.Linear``).

    Shapes: input ``(N, in_features)`` → output ``(N, out_features)``;
    weight ``(out_features, in_features)``, bias ``(out_features,)``.

    Default init is PyTorch's: weight ``kaiming_uniform_(a=√5)``, i.e.
    U(−1/√in_features, 1/√in_features), and bias from the same range.
    (torchvision's detection heads re-initialise, e.g. the box predictor
    with ``normal_(std=0.01)`` / ``normal_(std=0.001)`` and zero bias.)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        dtype = backend.DEFAULT_DTYPE
        self.weight = Parameter(np.empty((out_features, in_features), dtype=dtype))
        if bias:
            self.bias = Parameter(np.empty((out_features,), dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.default_layer_init_(self.weight, self.bias)

    def forward(self, x):
        return linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class Identity(Module):
    """Returns its input unchanged; a placeholder where a layer is optional.

    Accepts (and ignores) any constructor arguments, as ``torch.nn.Identity``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class Flatten(Module):
    """Merge dimensions ``start_dim..end_dim`` into one: ``(N, C, H, W)`` → ``(N, C·H·W)``."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, x):
        return flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
