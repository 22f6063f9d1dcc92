"""Gradient statistics: how much gradient reaches each part of a network.

Two questions come up whenever a detector trains badly — or when you want to
see what FPN's top-down pathway does:

* **Which modules learn?** :func:`gradient_norms` groups a module's
  parameters by name prefix (``backbone.body.layer1``, ``rpn.head``, …) and
  returns the L2 norm of each group's gradient after ``backward()``.
* **How much gradient reaches each feature map?** :class:`OutputGradients`
  hooks a module (the backbone, or its ResNet body) so that every map it
  returns keeps its ``.grad``; after ``backward()``, ``.norms()`` gives the
  gradient norm per level (``P2``…``P6`` or ``C2``…``C5``).

Both are plain reads of ``.grad``: they change nothing in training.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from minifpn import backend


def _norm(array) -> float:
    xp = backend.get_array_module(array)
    return float(xp.sqrt((array.astype(xp.float64) ** 2).sum()))


def gradient_norms(module, depth: int = 2, prefix: str = "") -> OrderedDict:
    """The gradient norm of each group of parameters, grouped by name.

    Args:
        module: a :class:`~minifpn.nn.Module` after ``backward()``.
        depth: how many dotted name parts make a group: with ``depth=2``,
            ``backbone.body.layer1.0.conv1.weight`` counts towards
            ``backbone.body``; with ``depth=3`` towards ``backbone.body.layer1``.
        prefix: only parameters whose name starts with this (e.g. ``"backbone."``).

    Returns:
        ``OrderedDict`` ``{group: √(Σ grad²)}`` in the order parameters are
        registered. A group whose parameters all have ``grad=None`` (unused
        in the last forward, or frozen) is ``0.0``; the norm of all groups
        together is ``√(Σ norm²)`` — what ``clip_grad_norm_`` clips.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    squares = OrderedDict()
    for name, parameter in module.named_parameters():
        if not name.startswith(prefix):
            continue
        group = ".".join(name.split(".")[:depth])
        grad = parameter.grad
        squares[group] = squares.get(group, 0.0) + (0.0 if grad is None else _norm(grad) ** 2)
    return OrderedDict((group, math.sqrt(value)) for group, value in squares.items())


class OutputGradients:
    """Keep the gradient of every feature map a module returns.

    Usage::

        with OutputGradients(model.backbone) as pyramid:
            losses = model(images, targets)
            sum(losses.values()).backward()
        pyramid.norms()          # {"P2": …, "P3": …, …}: ‖∂loss/∂P_l‖
        pyramid.grads["P2"]      # (N, C, H, W) array

    The module must return an ``OrderedDict`` of tensors (a backbone does) or
    a single tensor (stored under ``"output"``). Only the last forward call
    is kept.
    """

    def __init__(self, module):
        self.module = module
        self.outputs = OrderedDict()
        self._handle = None

    def _hook(self, module, inputs, output):
        items = output.items() if isinstance(output, dict) else [("output", output)]
        self.outputs = OrderedDict((name, tensor.retain_grad()) for name, tensor in items)

    def __enter__(self) -> OutputGradients:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> bool:
        self._handle.remove()
        return False

    @property
    def grads(self) -> OrderedDict:
        """``{name: gradient array}`` (None for a map that got no gradient)."""
        return OrderedDict((name, t.grad) for name, t in self.outputs.items())

    def norms(self, per_element: bool = False) -> OrderedDict:
        """``{name: ‖grad‖₂}`` (0.0 without a gradient); ``per_element``: divided by √size.

        The per-element (root-mean-square) value compares maps of different
        sizes fairly: P2 has 16× the cells of P4, so its plain norm is larger
        even when each cell gets the same gradient.
        """
        norms = OrderedDict()
        for name, grad in self.grads.items():
            if grad is None:
                norms[name] = 0.0
            else:
                norms[name] = _norm(grad) / (math.sqrt(grad.size) if per_element else 1.0)
        return norms
