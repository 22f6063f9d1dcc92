"""Weight initialisation, with exactly ``torch.nn.init``'s formulas.

Why initialisation matters: a layer computes ``y = W x`` with ``fan_in``
inputs per output. If the weights have variance ``σ²``, the output variance
is about ``fan_in · σ² · Var(x)``. Choosing ``σ² = gain² / fan_in`` keeps the
signal's scale from layer to layer (He et al., 2015, "Delving Deep into
Rectifiers"); the *gain* makes up for what the non-linearity removes — a
ReLU zeroes half its inputs, halving the variance, so its gain is √2.

Fans of a weight of shape ``(out, in, kh, kw)`` (a convolution) or
``(out, in)`` (a linear layer), as ``torch.nn.init._calculate_fan_in_and_fan_out``::

    receptive_field = kh · kw          (1 for a linear layer)
    fan_in  = in  · receptive_field    (size(1) · …)
    fan_out = out · receptive_field    (size(0) · …)

Every function draws its numbers on the host from minifpn's one seeded
generator (:func:`minifpn.backend.rng`) in float64, then writes them into the
tensor in its own dtype, on its own device. So a seed gives the same weights
on the CPU and the GPU. All functions change the tensor in place and return it.
"""

from __future__ import annotations

import math

import numpy as np

from minifpn import backend
from minifpn.autograd import raw


def _fill(tensor, values):
    """Write host ``values`` into ``tensor`` in place, on its device and in its dtype."""
    array = raw(tensor)
    array[...] = backend.to_device(np.asarray(values, dtype=array.dtype), backend.device_of(array))
    return tensor


def _calculate_fan_in_and_fan_out(tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight with at least 2 dimensions (see module docs)."""
    shape = tuple(raw(tensor).shape)
    if len(shape) < 2:
        raise ValueError(
            f"fan in and fan out need a tensor with at least 2 dimensions, got shape {shape}"
        )
    receptive_field = math.prod(shape[2:])  # 1 for a 2-D weight
    return shape[1] * receptive_field, shape[0] * receptive_field


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a non-linearity (``torch.nn.init.calculate_gain``).

    ============  ==================================
    linear, conv  1
    sigmoid       1
    tanh          5/3
    relu          √2
    leaky_relu    √(2 / (1 + slope²)), slope = ``param`` (default 0.01)
    selu          3/4
    ============  ==================================
    """
    linear_like = (
        "linear",
        "conv1d",
        "conv2d",
        "conv3d",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "sigmoid",
    )
    if nonlinearity in linear_like:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"negative_slope {slope!r} is not a number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def _fan(tensor, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor, a: float = 0.0, b: float = 1.0):
    """Fill with samples from U(a, b)."""
    shape = raw(tensor).shape
    return _fill(tensor, backend.rng().uniform(a, b, size=shape))


def normal_(tensor, mean: float = 0.0, std: float = 1.0):
    """Fill with samples from N(mean, std²)."""
    shape = raw(tensor).shape
    return _fill(tensor, backend.rng().normal(mean, std, size=shape))


def constant_(tensor, val: float):
    """Fill with the value ``val``."""
    raw(tensor)[...] = val
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def default_layer_init_(weight, bias=None) -> None:
    """PyTorch's default init of ``Linear`` and ``Conv*d`` layers.

    ``kaiming_uniform_(weight, a=√5)`` — which works out to
    U(−1/√fan_in, 1/√fan_in) — and the bias from the same range.
    """
    kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in, _ = _calculate_fan_in_and_fan_out(weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        uniform_(bias, -bound, bound)


def kaiming_uniform_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity="leaky_relu"):
    """He initialisation, uniform: U(−bound, bound) with ``bound = gain · √(3 / fan)``.

    (A uniform distribution on [−b, b] has variance b²/3, so this gives
    ``std = gain / √fan``.) ``a`` is the negative slope of the leaky ReLU,
    used only when ``nonlinearity="leaky_relu"`` (the default, as in PyTorch).
    ``mode="fan_in"`` preserves the forward signal's variance, ``"fan_out"``
    the backward gradient's.

    PyTorch's default layer init is ``kaiming_uniform_(w, a=√5)``: the gain is
    √(2 / (1 + 5)) = √(1/3), so ``bound = 1 / √fan_in``.
    """
    if raw(tensor).size == 0:
        return tensor  # nothing to fill (PyTorch warns and does the same)
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity="leaky_relu"):
    """He initialisation, normal: N(0, std²) with ``std = gain / √fan``.

    torchvision's ResNet initialises every convolution with
    ``kaiming_normal_(w, mode="fan_out", nonlinearity="relu")``:
    ``std = √2 / √(out_channels · kh · kw)``.
    """
    if raw(tensor).size == 0:
        return tensor
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    return normal_(tensor, 0.0, std)


__all__ = [
    "_calculate_fan_in_and_fan_out",
    "calculate_gain",
    "constant_",
    "kaiming_normal_",
    "kaiming_uniform_",
    "normal_",
    "ones_",
    "uniform_",
    "zeros_",
]
