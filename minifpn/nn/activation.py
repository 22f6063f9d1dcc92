"""Activation layers. ``ReLU`` is the only one an FPN detector needs."""

from __future__ import annotations

from minifpn.functional import relu
from minifpn.nn.module import Module


class ReLU(Module):
    """``max(x, 0)`` element-wise (``torch.nn.ReLU``); any shape in, same shape out.

    ``inplace`` is accepted so torchvision-style code (``ReLU(inplace=True)``)
    runs unchanged, but it is ignored: minifpn's autograd never overwrites an
    array that a backward pass might still need.
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return relu(x)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""
