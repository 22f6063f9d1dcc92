"""Reductions: sum, mean, max over an axis (or all of them).

The backward of a reduction *broadcasts* the gradient back over the reduced
axes — the mirror image of :func:`~minifpn.functional.elementwise.unbroadcast`.
Both NumPy-style (``axis``, ``keepdims``) and PyTorch-style (``dim``,
``keepdim``) argument names are accepted.
"""

from __future__ import annotations

import numpy as np

from minifpn.autograd import Tensor, as_tensor
from minifpn.backend import get_array_module


def _axes(axis, dim, keepdims, keepdim, ndim):
    """Resolve the axis/dim aliases into a tuple of non-negative axes."""
    if dim is not None:
        axis = dim
    if keepdim is not None:
        keepdims = keepdim
    if axis is None:
        return tuple(range(ndim)), keepdims
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(a % ndim for a in axis), keepdims


def sum(x, axis=None, keepdims=False, *, dim=None, keepdim=None) -> Tensor:
    x = as_tensor(x)
    axes, keepdims = _axes(axis, dim, keepdims, keepdim, x.ndim)
    xp = get_array_module(x.data)

    def backward(g):
        g = g if keepdims else xp.expand_dims(g, axes)
        return (xp.broadcast_to(g, x.shape).copy(),)

    return Tensor._make(x.data.sum(axis=axes, keepdims=keepdims), (x,), backward, "sum")


def mean(x, axis=None, keepdims=False, *, dim=None, keepdim=None) -> Tensor:
    x = as_tensor(x)
    axes, keepdims = _axes(axis, dim, keepdims, keepdim, x.ndim)
    xp = get_array_module(x.data)
    count = int(np.prod([x.shape[a] for a in axes]))

    def backward(g):
        g = g if keepdims else xp.expand_dims(g, axes)
        return (xp.broadcast_to(g / count, x.shape).copy(),)

    return Tensor._make(x.data.mean(axis=axes, keepdims=keepdims), (x,), backward, "mean")


def max(x, axis=None, keepdims=False, *, dim=None, keepdim=None) -> Tensor:
    """Largest value over ``axis``.

    Differs from PyTorch: ``x.max(dim)`` returns only the values (use
    ``x.argmax(dim)`` for indices), and when several elements tie for the
    maximum the gradient is shared equally among them (like ``torch.amax``),
    where ``torch.max(dim)`` sends all of it to one index.
    """
    x = as_tensor(x)
    axes, keepdims = _axes(axis, dim, keepdims, keepdim, x.ndim)
    xp = get_array_module(x.data)
    out_keep = x.data.max(axis=axes, keepdims=True)

    def backward(g):
        g = g if keepdims else xp.expand_dims(g, axes)
        is_max = (x.data == out_keep).astype(x.dtype)
        return (g * is_max / is_max.sum(axis=axes, keepdims=True),)

    out = out_keep if keepdims else xp.squeeze(out_keep, axis=axes)
    return Tensor._make(out, (x,), backward, "max")
