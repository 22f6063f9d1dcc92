"""Ops that move values around without changing them.

reshape / flatten / permute / transpose / (un)squeeze, cat / stack, indexing,
constant padding, and device/dtype conversion. Each backward simply undoes
the move: reshape back, permute with the inverse permutation, split the
concatenation, scatter the indexed values back into a zero array.
"""

from __future__ import annotations

import math

import numpy as np

from minifpn import backend
from minifpn.autograd import Tensor, as_tensor, check_same_kind, raw
from minifpn.backend import get_array_module


def reshape(x, shape) -> Tensor:
    x = as_tensor(x)
    return Tensor._make(x.data.reshape(shape), (x,), lambda g: (g.reshape(x.shape),), "reshape")


def flatten(x, start_dim=0, end_dim=-1) -> Tensor:
    """Merge axes ``start_dim..end_dim`` into one, as ``torch.flatten``."""
    x = as_tensor(x)
    start, end = start_dim % max(x.ndim, 1), end_dim % max(x.ndim, 1)
    merged = math.prod(x.shape[start : end + 1])  # not -1: that cannot be inferred for 0 rows
    shape = x.shape[:start] + (merged,) + x.shape[end + 1 :]
    return reshape(x, shape)


def permute(x, dims) -> Tensor:
    """Reorder axes (NumPy's ``transpose(axes)``, PyTorch's ``permute``)."""
    x = as_tensor(x)
    dims = tuple(d % x.ndim for d in dims)
    inverse = tuple(np.argsort(dims))
    return Tensor._make(
        x.data.transpose(dims), (x,), lambda g: (g.transpose(inverse),), "permute"
    )


def transpose(x, dim0, dim1) -> Tensor:
    """Swap two axes, as ``torch.transpose`` (not NumPy's full permutation)."""
    x = as_tensor(x)
    dims = list(range(x.ndim))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return permute(x, dims)


def unsqueeze(x, dim) -> Tensor:
    x = as_tensor(x)
    dim = dim % (x.ndim + 1)
    return reshape(x, x.shape[:dim] + (1,) + x.shape[dim:])


def squeeze(x, dim=None) -> Tensor:
    x = as_tensor(x)
    if dim is None:
        shape = tuple(n for n in x.shape if n != 1)
    else:
        dim = dim % x.ndim
        shape = x.shape if x.shape[dim] != 1 else x.shape[:dim] + x.shape[dim + 1 :]
    return reshape(x, shape)


def cat(tensors, dim=0) -> Tensor:
    """Concatenate along an existing axis (``torch.cat``); the backward splits."""
    tensors = [as_tensor(t) for t in tensors]
    for t in tensors[1:]:
        check_same_kind(tensors[0], t, "cat")
    xp = get_array_module(tensors[0].data)
    dim = dim % tensors[0].ndim
    bounds = np.cumsum([t.shape[dim] for t in tensors])[:-1]

    def backward(g):
        return tuple(xp.split(g, bounds, axis=dim))

    out = xp.concatenate([t.data for t in tensors], axis=dim)
    return Tensor._make(out, tuple(tensors), backward, "cat")


concat = cat


def stack(tensors, dim=0) -> Tensor:
    """Join along a new axis (``torch.stack``)."""
    tensors = [as_tensor(t) for t in tensors]
    dim = dim % (tensors[0].ndim + 1)
    return cat([unsqueeze(t, dim) for t in tensors], dim=dim)


def _is_basic_index(index) -> bool:
    """True for ints, slices, None and Ellipsis only: no position can repeat."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, slice)) for p in parts)


def _raw_index(index):
    return tuple(raw(i) for i in index) if isinstance(index, tuple) else raw(index)


def getitem(x, index) -> Tensor:
    """``x[index]`` with NumPy indexing rules (slices, integer arrays, masks).

    Backward scatters the gradient into zeros of ``x``'s shape. With integer
    arrays an element can be picked several times (``x[[0, 0, 1]]``); its
    gradient must then be the *sum* of all the picks, which plain assignment
    would lose — so advanced indices go through ``scatter_add``.
    """
    x = as_tensor(x)
    index = _raw_index(index)
    xp = get_array_module(x.data)
    basic = _is_basic_index(index)

    def backward(g):
        gx = xp.zeros_like(x.data)
        if basic:
            gx[index] = g
        else:
            backend.scatter_add(gx, index, g)
        return (gx,)

    return Tensor._make(x.data[index], (x,), backward, "getitem")


def pad(x, pad, value=0.0) -> Tensor:
    """Constant padding, ``torch.nn.functional.pad`` order.

    ``pad`` lists (before, after) pairs starting from the *last* axis:
    ``(left, right, top, bottom)`` pads W then H of an NCHW map.
    """
    x = as_tensor(x)
    xp = get_array_module(x.data)
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    crop = tuple(slice(b, n + b) for (b, _), n in zip(widths, x.shape))
    out = xp.pad(x.data, widths, constant_values=value)
    return Tensor._make(out, (x,), lambda g: (g[crop],), "pad")


def to_device_dtype(x, device=None, dtype=None) -> Tensor:
    """Copy to another device and/or dtype; the gradient comes back the same way."""
    x = as_tensor(x)
    src_device, src_dtype = x.device, x.dtype
    data = x.data if device is None else backend.to_device(x.data, device)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    if data is x.data:
        return x

    def backward(g):
        return (backend.to_device(g, src_device).astype(src_dtype, copy=False),)

    return Tensor._make(data, (x,), backward, "to")
