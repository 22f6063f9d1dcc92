"""Differentiable ops on :class:`minifpn.Tensor`, named as in ``torch.nn.functional``.

Each op computes its forward result on raw NumPy/CuPy arrays and, right
beside it, the closure that computes its backward pass. Where an op's
semantics differ from PyTorch's in any way, its docstring says so.

Importing this package also gives :class:`~minifpn.autograd.Tensor` its
operators and op methods (``x + y``, ``x.sum()``, …; see
:mod:`~minifpn.functional.tensor_methods`).
"""

from minifpn.autograd import Tensor as _Tensor
from minifpn.functional.activation import log_softmax, relu, sigmoid, softmax
from minifpn.functional.conv import conv2d, conv_transpose2d
from minifpn.functional.elementwise import (
    abs,
    add,
    clamp,
    div,
    exp,
    log,
    mul,
    neg,
    pow,
    sqrt,
    sub,
    where,
)
from minifpn.functional.interpolate import interpolate
from minifpn.functional.linear import linear, matmul
from minifpn.functional.loss import (
    binary_cross_entropy_with_logits,
    cross_entropy,
    l1_loss,
    smooth_l1_loss,
)
from minifpn.functional.norm import batch_norm, frozen_batch_norm, group_norm
from minifpn.functional.pooling import max_pool2d
from minifpn.functional.reduction import max, mean, sum
from minifpn.functional.shape import (
    cat,
    concat,
    flatten,
    getitem,
    pad,
    permute,
    reshape,
    squeeze,
    stack,
    to_device_dtype,
    transpose,
    unsqueeze,
)
from minifpn.functional.tensor_methods import install_tensor_methods as _install

__all__ = [name for name in dir() if not name.startswith("_")]

_install(_Tensor)  # x + y, x.sum(), x.to(…), …: the Tensor's op methods (see tensor_methods)
