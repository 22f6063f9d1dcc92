"""Elementwise arithmetic with NumPy broadcasting: +, -, *, /, **, exp, log, ...

Broadcasting is the one subtle part of these backward passes. When a
``(C, 1, 1)`` bias is added to an ``(N, C, H, W)`` map, the forward pass
silently repeats the bias N·H·W times; the backward pass must therefore *sum*
the gradient over every repeated position to get back to ``(C, 1, 1)``.
:func:`unbroadcast` does exactly that, and every binary op calls it.
"""

from __future__ import annotations

from minifpn import backend
from minifpn.autograd import Tensor, as_tensor, check_same_kind
from minifpn.backend import get_array_module


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``, undoing NumPy broadcasting.

    Broadcasting (1) prepends size-1 axes until the ranks match, then (2)
    stretches size-1 axes. We undo (1) by summing the leading axes away and
    (2) by summing, with keepdims, over axes where ``shape`` has size 1.
    """
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


def _pair(a, b, op):
    """Both operands as Tensors of one dtype and device (constants adapt)."""
    if isinstance(a, Tensor):
        b = as_tensor(b, like=a)
    else:
        a = as_tensor(a, like=b)
    check_same_kind(a, b, op)
    return a, b


def add(a, b) -> Tensor:
    a, b = _pair(a, b, "add")
    xp = get_array_module(a.data)

    def backward(g):
        return unbroadcast(g, a.shape), unbroadcast(g, b.shape)

    if a.shape == b.shape and a.dtype == b.dtype:  # a residual sum: blockwise on the threads
        out = backend.map_blocks(lambda o, u, v: xp.add(u, v, out=o),
                                 xp.empty_like(a.data), a.data, b.data, xp=xp)
    else:
        out = a.data + b.data
    return Tensor._make(out, (a, b), backward, "add")


def sub(a, b) -> Tensor:
    a, b = _pair(a, b, "sub")

    def backward(g):
        return unbroadcast(g, a.shape), unbroadcast(-g, b.shape)

    return Tensor._make(a.data - b.data, (a, b), backward, "sub")


def mul(a, b) -> Tensor:
    a, b = _pair(a, b, "mul")

    def backward(g):
        ga = unbroadcast(g * b.data, a.shape) if a.requires_grad else None
        gb = unbroadcast(g * a.data, b.shape) if b.requires_grad else None
        return ga, gb

    return Tensor._make(a.data * b.data, (a, b), backward, "mul")


def div(a, b) -> Tensor:
    a, b = _pair(a, b, "div")
    out = a.data / b.data

    def backward(g):
        ga = unbroadcast(g / b.data, a.shape) if a.requires_grad else None
        gb = unbroadcast(-g * out / b.data, b.shape) if b.requires_grad else None
        return ga, gb

    return Tensor._make(out, (a, b), backward, "div")


def neg(x) -> Tensor:
    x = as_tensor(x)
    return Tensor._make(-x.data, (x,), lambda g: (-g,), "neg")


def pow(base, exponent) -> Tensor:
    """``base ** exponent``; either may be a tensor.

    The gradient for the exponent uses ``log(base)``, so it is only defined
    for positive bases (as in PyTorch, where it is NaN otherwise).
    """
    base, exponent = _pair(base, exponent, "pow")
    xp = get_array_module(base.data)
    out = base.data**exponent.data

    def backward(g):
        gb = ge = None
        if base.requires_grad:
            gb = unbroadcast(g * exponent.data * base.data ** (exponent.data - 1), base.shape)
        if exponent.requires_grad:
            ge = unbroadcast(g * out * xp.log(base.data), exponent.shape)
        return gb, ge

    return Tensor._make(out, (base, exponent), backward, "pow")


def exp(x) -> Tensor:
    x = as_tensor(x)
    out = get_array_module(x.data).exp(x.data)
    return Tensor._make(out, (x,), lambda g: (g * out,), "exp")


def log(x) -> Tensor:
    x = as_tensor(x)
    out = get_array_module(x.data).log(x.data)
    return Tensor._make(out, (x,), lambda g: (g / x.data,), "log")


def sqrt(x) -> Tensor:
    x = as_tensor(x)
    out = get_array_module(x.data).sqrt(x.data)
    return Tensor._make(out, (x,), lambda g: (g / (2 * out),), "sqrt")


def abs(x) -> Tensor:
    """``|x|``; the gradient at 0 is 0 (the sign), as in PyTorch."""
    x = as_tensor(x)
    xp = get_array_module(x.data)
    return Tensor._make(xp.abs(x.data), (x,), lambda g: (g * xp.sign(x.data),), "abs")


def clamp(x, min=None, max=None) -> Tensor:
    """Limit ``x`` to ``[min, max]``; the gradient is 1 inside, 0 where clipped."""
    x = as_tensor(x)
    xp = get_array_module(x.data)
    out = xp.clip(x.data, min, max)
    inside = out == x.data
    return Tensor._make(out, (x,), lambda g: (g * inside,), "clamp")


def where(condition, a, b) -> Tensor:
    """``a`` where ``condition`` else ``b``; the gradient goes to the chosen side.

    The condition follows the operands' rules: a mask (Tensor or array) must
    live on their device — as in PyTorch, a CPU mask meeting GPU tensors is an
    error naming both devices, not a hidden copy; a Python bool or list is a
    constant, made on their device.
    """
    a, b = _pair(a, b, "where")
    xp = get_array_module(a.data)
    if not isinstance(condition, Tensor):
        is_array = hasattr(condition, "dtype")
        condition = Tensor(condition if is_array else xp.asarray(condition, dtype=bool))
    check_same_kind(condition, a, "where")
    cond = condition.data

    def backward(g):
        zero = xp.zeros((), dtype=g.dtype)
        return (
            unbroadcast(xp.where(cond, g, zero), a.shape),
            unbroadcast(xp.where(cond, zero, g), b.shape),
        )

    return Tensor._make(xp.where(cond, a.data, b.data), (a, b), backward, "where")
