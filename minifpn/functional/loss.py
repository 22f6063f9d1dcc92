"""Loss functions of a two-stage detector.

* ``cross_entropy``          — the box head's classification (K+1 classes).
* ``binary_cross_entropy_with_logits`` — RPN objectness, mask pixels.
* ``smooth_l1_loss``         — box regression (β = 1/9 in the RPN and heads).
* ``l1_loss``                — plain |x − y|.

Each works on logits/raw values and fuses the backward into one closed form,
which is both faster and numerically safer than chaining log, exp, and sums.
``reduction`` is ``"mean"``, ``"sum"`` or ``"none"`` as in PyTorch.
"""

from __future__ import annotations

from minifpn.autograd import Tensor, as_tensor, check_same_kind, raw
from minifpn.backend import get_array_module
from minifpn.functional.activation import stable_sigmoid


def _reduce(loss, reduction, count=None):
    """Apply a reduction to a raw loss array; return (value, scale of dL/d loss)."""
    if reduction == "none":
        return loss, None
    if reduction == "sum":
        return loss.sum(), 1.0
    if reduction == "mean":
        if count is None:  # every element counts: a number the host knows
            count = max(loss.size, 1)
        else:  # counted on the device (e.g. the non-ignored targets): it stays there
            count = get_array_module(loss).maximum(count, 1).astype(loss.dtype)
        return loss.sum() / count, 1.0 / count
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _upstream(g, scale, dtype):
    """The incoming gradient as an array that broadcasts over the elements."""
    return (g if scale is None else g * scale).astype(dtype, copy=False)


def cross_entropy(logits, target, ignore_index=-100, reduction="mean") -> Tensor:
    """Softmax cross-entropy, as ``torch.nn.functional.cross_entropy``.

    Args:
        logits: ``(N, C)`` unnormalised scores.
        target: ``(N,)`` integer class indices; entries equal to
            ``ignore_index`` contribute neither loss nor gradient.
        reduction: ``"mean"`` averages over the *non-ignored* targets.

    Backward: ``softmax(logits) − one_hot(target)``, zero on ignored rows.
    Differs from PyTorch: no class ``weight`` or ``label_smoothing``, only
    2-D logits, and when *every* target is ignored the mean is 0 (PyTorch
    gives NaN) — a batch without usable RoIs should not poison training.
    """
    logits = as_tensor(logits)
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be (N, C), got shape {logits.shape}")
    xp = get_array_module(logits.data)
    target = xp.asarray(raw(target))
    if target.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy: target shape {target.shape} != ({logits.shape[0]},)")
    valid = target != ignore_index
    safe_target = xp.where(valid, target, 0).astype(xp.int64)
    rows = xp.arange(logits.shape[0])

    shifted = logits.data - logits.data.max(axis=1, keepdims=True)
    log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[rows, safe_target] * valid
    value, scale = _reduce(loss, reduction, count=valid.sum())

    def backward(g):
        grad = xp.exp(log_probs)
        grad[rows, safe_target] -= 1
        grad *= valid[:, None]
        g = _upstream(g, scale, grad.dtype)
        return (grad * (g[:, None] if g.ndim else g),)

    return Tensor._make(value, (logits,), backward, "cross_entropy")


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean") -> Tensor:
    """Sigmoid + binary cross-entropy in one stable formula.

    ``loss = max(x, 0) − x·y + log(1 + exp(−|x|))`` equals
    ``−[y·log σ(x) + (1 − y)·log(1 − σ(x))]`` but never takes the log of 0.
    Gradient: ``(σ(x) − y) · weight``. ``target`` may be soft (in [0, 1]);
    it and ``weight`` are constants (no gradient flows into them).
    """
    input = as_tensor(input)
    xp = get_array_module(input.data)
    y = xp.asarray(raw(target), dtype=input.dtype)
    if y.shape != input.shape:
        raise ValueError(
            f"binary_cross_entropy_with_logits: target {y.shape} != input {input.shape}"
        )
    x = input.data
    loss = xp.maximum(x, 0) - x * y + xp.log1p(xp.exp(-xp.abs(x)))
    w = None if weight is None else xp.asarray(raw(weight), dtype=x.dtype)
    if w is not None:
        loss = loss * w
    value, scale = _reduce(loss, reduction)

    def backward(g):
        grad = stable_sigmoid(x) - y
        if w is not None:
            grad = grad * w
        return (grad * _upstream(g, scale, grad.dtype),)

    return Tensor._make(value, (input,), backward, "binary_cross_entropy_with_logits")


def smooth_l1_loss(input, target, beta=1.0, reduction="mean") -> Tensor:
    """Huber-style loss, as ``torch.nn.functional.smooth_l1_loss``.

    ``0.5·d²/β`` for ``|d| < β`` and ``|d| − 0.5·β`` otherwise, d = input − target:
    quadratic near zero (smooth gradients for small errors), linear far away
    (bounded gradients for outliers). β = 0 is plain L1. Gradients flow into
    both ``input`` and ``target`` when they are tensors that need them.
    """
    input = as_tensor(input)
    target = as_tensor(target, like=input)
    check_same_kind(input, target, "smooth_l1_loss")
    xp = get_array_module(input.data)
    diff = input.data - target.data
    absd = xp.abs(diff)
    if beta > 0:
        small = absd < beta
        loss = xp.where(small, 0.5 * diff * diff / beta, absd - 0.5 * beta)
    else:
        loss = absd
    value, scale = _reduce(loss, reduction)

    def backward(g):
        grad = xp.where(small, diff / beta, xp.sign(diff)) if beta > 0 else xp.sign(diff)
        grad = grad * _upstream(g, scale, diff.dtype)
        return grad, -grad

    return Tensor._make(value, (input, target), backward, "smooth_l1_loss")


def l1_loss(input, target, reduction="mean") -> Tensor:
    """Mean absolute error ``|input − target|``, as ``torch.nn.functional.l1_loss``."""
    return smooth_l1_loss(input, target, beta=0.0, reduction=reduction)
