"""Activation layers. ``ReLU`` is the only one an FPN detector needs."""

from __future__ import annotations

from minifpn.functional import relu
from minifpn.nn.module import Module


class ReLU(Module):
    """``max(x, 0)`` element-wise (``torch.nn.ReLU``); any shape in, same shape out.

    ``inplace=True`` writes the result over the input's own array, as in
    PyTorch — one activation less to keep for the backward pass — and is
    checked the same way: a backward pass that would need the overwritten
    values raises an error (see :func:`minifpn.functional.relu`).
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return relu(x, inplace=self.inplace)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""
