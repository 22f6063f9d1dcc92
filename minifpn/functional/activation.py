"""Activations: relu, sigmoid, softmax, log_softmax.

Softmax and log-softmax subtract the row maximum before exponentiating: the
result is mathematically unchanged (the constant cancels) but ``exp`` can no
longer overflow for large logits.
"""

from __future__ import annotations

from minifpn import backend
from minifpn.autograd import Tensor, as_tensor, mark_modified_in_place
from minifpn.backend import get_array_module


def relu(x, inplace: bool = False) -> Tensor:
    """``max(x, 0)``; the gradient at exactly 0 is taken as 0, as in PyTorch.

    With ``inplace=True`` the result is written over ``x``'s own data, as
    ``torch.nn.functional.relu(x, inplace=True)``: the graph then keeps one
    array where it would keep two (a conv → norm → ReLU layer holds its norm's
    output only as the ReLU's result). Only for a tensor no other op has read:
    the autograd engine checks this (``x``'s version) and refuses the backward
    pass otherwise. (When ``x``'s data is a view of another array, a new array
    is made after all.) Both directions run blockwise on the CPU's threads
    (``backend.map_blocks``); the backward pass reads the output, as PyTorch's.
    """
    x = as_tensor(x)
    xp = get_array_module(x.data)
    if inplace and x.requires_grad and x._backward is None:
        raise RuntimeError("relu(inplace=True) on a leaf that requires grad: its gradient "
                           "would be lost; use inplace=False")
    inplace = inplace and x.data.base is None  # a view's memory belongs to another tensor too
    target = x.data if inplace else xp.empty_like(x.data)
    out = backend.map_blocks(lambda o, a: xp.maximum(a, 0, out=o), target, x.data, xp=xp)
    if inplace:
        mark_modified_in_place(x)

    def backward(g):
        return (backend.map_blocks(lambda gx, gy, y: xp.multiply(gy, y > 0, out=gx),
                                   xp.empty_like(g), g, out, xp=xp),)

    result = Tensor._make(out, (x,), backward, "relu")
    if inplace:
        result._version = x._version  # one array, one version: a later in-place op is seen
    return result


def stable_sigmoid(z):
    """σ(z) on a raw array, without overflow for large |z|.

    ``1 / (1 + exp(-z))`` overflows ``exp`` for very negative z; writing it
    as ``exp(z) / (1 + exp(z))`` there (with ``exp(-|z|) ≤ 1``) never does.
    """
    xp = get_array_module(z)
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid(x) -> Tensor:
    """``1 / (1 + exp(-x))``; dσ/dx = σ(1 − σ)."""
    x = as_tensor(x)
    out = stable_sigmoid(x.data)
    return Tensor._make(out, (x,), lambda g: (g * out * (1 - out),), "sigmoid")


def log_softmax(x, dim=-1) -> Tensor:
    """``x - logsumexp(x, dim)``; backward: ``g - softmax · Σg``."""
    x = as_tensor(x)
    xp = get_array_module(x.data)
    shifted = x.data - x.data.max(axis=dim, keepdims=True)
    out = shifted - xp.log(xp.exp(shifted).sum(axis=dim, keepdims=True))

    def backward(g):
        return (g - xp.exp(out) * g.sum(axis=dim, keepdims=True),)

    return Tensor._make(out, (x,), backward, "log_softmax")


def softmax(x, dim=-1) -> Tensor:
    """``exp(x) / Σ exp(x)`` over ``dim``; backward: ``s · (g − Σ g·s)``."""
    x = as_tensor(x)
    xp = get_array_module(x.data)
    e = xp.exp(x.data - x.data.max(axis=dim, keepdims=True))
    out = e / e.sum(axis=dim, keepdims=True)

    def backward(g):
        return (out * (g - (g * out).sum(axis=dim, keepdims=True)),)

    return Tensor._make(out, (x,), backward, "softmax")
